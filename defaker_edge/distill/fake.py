"""Test doubles: an oracle teacher with the teacher's `predict` signature, and a tiny forgery set.

Used by the tests (and handy for smoke runs) so distillation and pruning can be exercised without
the teacher stage or the synthetic-data stage. Not a model of anything: the oracle reads the
ground truth it was given and adds noise, so a student trained on it has something learnable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import load_dataset, load_dataset_image, load_mask


@dataclass
class FakeTeacherOutput:
    fake_prob: float
    mask_logits: "object"  # torch.Tensor [H, W]
    seg_embedding: "object" = None
    vision_features: "object" = None


class OracleTeacher:
    """predict(img_u8) -> FakeTeacherOutput from the ground truth of a known image, plus noise."""

    def __init__(self, manifest: str, noise: float = 0.5, seed: int = 0, features: int = 0):
        self.noise, self.seed, self.features = noise, seed, features
        self._gt: dict[str, tuple[int, np.ndarray]] = {}
        for s in load_dataset(manifest):
            img = load_dataset_image(s.image)
            m = load_mask(s.mask, size=img.shape[:2])[0] if s.mask else \
                np.full(img.shape[:2], bool(s.label and s.domain == "aigc"))
            self._gt[self._key(img)] = (s.label, m)

    @staticmethod
    def _key(img: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()

    def predict(self, img: np.ndarray, return_features: bool = False) -> FakeTeacherOutput:
        import torch

        label, m = self._gt.get(self._key(img), (0, np.zeros(img.shape[:2], bool)))
        rng = np.random.default_rng([self.seed, img.shape[0], img.shape[1]])
        logits = np.where(m, 3.0, -3.0) + rng.normal(0, self.noise, m.shape)
        p = float(np.clip(0.85 * label + 0.1 + rng.normal(0, 0.05), 0.01, 0.99))
        feats = None
        if self.features and return_features:  # [C, h, w], as the teacher's SAM2 embedding
            feats = torch.from_numpy(rng.normal(size=(self.features, 2, 2)).astype(np.float32) + label)
        return FakeTeacherOutput(p, torch.from_numpy(logits.astype(np.float32)), None, feats)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    base = rng.normal(128, 40, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, rng.uniform(2, 6), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_tiny_dataset(out: str | Path, n: int = 24, seed: int = 0, size: tuple[int, int] = (96, 200)) -> Path:
    """n images (half spliced: a region with a different noise level, blurred; mask PNGs), splits by index."""
    import cv2

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(size[0], size[1], 2))
        img = _texture(rng, h, w)
        split = ("train", "train", "val", "train", "test", "train")[(i // 2) % 6]  # pairs: both classes per split
        rec = {"image": f"images/{i:03d}.png", "mask": None, "label": i % 2, "domain": "natural",
               "kind": "authentic" if i % 2 == 0 else "splice", "split": split}
        if i % 2:
            mh, mw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
            y, x = int(rng.integers(0, h - mh)), int(rng.integers(0, w - mw))
            patch = cv2.GaussianBlur(_texture(rng, mh, mw), (5, 5), 0)
            img[y:y + mh, x:x + mw] = patch
            mask = np.zeros((h, w), np.uint8)
            mask[y:y + mh, x:x + mw] = 255
            cv2.imwrite(str(out / f"masks/{i:03d}.png"), mask)
            rec["mask"] = f"masks/{i:03d}.png"
        cv2.imwrite(str(out / rec["image"]), img[:, :, ::-1])
        lines.append(json.dumps(rec))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out / "manifest.jsonl"
