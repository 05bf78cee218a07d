"""Shared by test_calibration.py and test_quantize.py: toy forgery data and a hand-made detector.

The data: smooth images (a 4x4 random field upsampled, so no high frequencies), half of them with
a pasted patch of pixel noise (the forgery, with its mask); 4 domains, train/val splits. The
detector: a fixed Laplacian high-pass, ReLU energy, a slightly perturbed identity mix, 4x4 average
pooling and a 1x1 head, so it separates the toy fakes perfectly (AUC 1, pixel F1 ~0.9) with the
student contract x[B,3,T,T] -> (fake_logit[B], mask_logits[B,1,T/4,T/4]). Accuracy that a
quantization breaks is therefore visible in the gate, which a random network would not show.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

DOMS = ("natural", "document", "face", "aigc")


def make_toy_data(root: Path, n: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        dom, label = DOMS[i % 4], (i // 4) % 2
        h, w = int(rng.integers(136, 200)), int(rng.integers(136, 200))
        # smooth background: a low-resolution random field upsampled (no high frequencies)
        small = rng.uniform(60, 200, size=(4, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int16)
        rec = {"image": f"images/{i:03d}.png", "label": label, "domain": dom,
               "kind": "splice" if label else "authentic", "split": "val" if i >= n // 2 else "train", "mask": None}
        if label:
            ph, pw = int(rng.integers(24, 60)), int(rng.integers(24, 60))
            y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
            img[y:y + ph, x:x + pw] += rng.integers(-40, 41, size=(ph, pw, 1)).astype(np.int16)
            m = np.zeros((h, w), np.uint8)
            m[y:y + ph, x:x + pw] = 255
            Image.fromarray(m).save(root / f"masks/{i:03d}.png")
            rec["mask"] = f"masks/{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / rec["image"])
        lines.append(json.dumps(rec))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def break_stem(qmodel) -> None:
    """A deliberately broken quantization: the first conv's input range is set to an absurd 1e-3,
    so every input pixel is clipped to +-1e-3 and the detector goes blind."""
    import torch

    qmodel.stem.input_quantizer.amax = torch.tensor(1e-3)


class ToyDetector(nn.Module):
    """High-pass energy detector with the student contract: x[B,3,T,T] -> (fake_logit[B], mask[B,1,T/4,T/4])."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        lap = torch.tensor([[0., -1, 0], [-1, 4, -1], [0, -1, 0]]) / 3.0
        with torch.no_grad():
            self.stem.weight.zero_()
            for c in range(3):
                self.stem.weight[0, c] = lap
                self.stem.weight[1, c] = -lap
        self.mix = nn.Conv2d(2, 4, 3, padding=1)
        with torch.no_grad():
            self.mix.weight.copy_(0.05 * torch.randn_like(self.mix.weight))
            self.mix.weight[:, :, 1, 1] += 1.0
            self.mix.bias.zero_()
        self.pool = nn.AvgPool2d(4)
        self.head = nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.head.weight.fill_(2.0)
            self.head.bias.fill_(-3.0)

    def forward(self, x):
        e = torch.relu(self.mix(torch.relu(self.stem(x))))
        m = self.head(self.pool(e))
        return m.flatten(1).amax(1), m
