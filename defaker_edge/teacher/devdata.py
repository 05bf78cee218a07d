"""A small, quick forgery set for tests and development (the real generator is defaker_edge.data.synth).

Writes OUT/manifest.jsonl, OUT/images/*.png, OUT/masks/*.png in the manifest format of
data/dataset.py. Backgrounds are smooth colour fields with shapes and sensor-like noise; a fake has
one elliptical or rectangular region replaced by a splice from another background (different noise
level), a copy-move, or a blur, and its mask marks that region. Split by index pairs (one real, one fake): 8/1/1 train/val/test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _background(rng: np.random.Generator, h: int, w: int, noise: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, d = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * xx / w * 6 + b * yy / h * 6 + d * 3)
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(10, max(11, min(h, w) // 3))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(20, 235, 3)
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255)


def _region(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rh, rw = rng.integers(h // 8, h // 3), rng.integers(w // 8, w // 3)
    cy, cx = rng.integers(rh, h - rh), rng.integers(rw, w - rw)
    if rng.random() < 0.5:
        return ((yy - cy) / rh) ** 2 + ((xx - cx) / rw) ** 2 < 1
    return (abs(yy - cy) < rh) & (abs(xx - cx) < rw)


def make_dev_data(out: str | Path, n: int = 40, seed: int = 0, size_range: tuple[int, int] = (256, 512)) -> Path:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        noise = float(rng.uniform(1.0, 4.0))
        img = _background(rng, h, w, noise)
        fake = i % 2 == 1
        rec = {"image": f"images/{i:05d}.png", "mask": None, "label": int(fake), "domain": "natural",
               "kind": "authentic", "split": (("train",) * 8 + ("val", "test"))[(i // 2) % 10], "source": "devdata"}
        if fake:
            m = _region(rng, h, w)
            kind = ("splice", "copy_move", "blur")[int(rng.integers(0, 3))]
            if kind == "splice":
                other = _background(rng, h, w, noise + float(rng.uniform(4, 10)))
                img[m] = other[m]
            elif kind == "copy_move":
                dy, dx = int(rng.integers(-h // 4, h // 4)), int(rng.integers(-w // 4, w // 4))
                src = np.roll(img, (dy, dx), axis=(0, 1)) + rng.normal(0, 6, img.shape)
                img[m] = src[m]
            else:
                from PIL import ImageFilter

                blurred = np.asarray(Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2.5)))
                img[m] = blurred[m]
            Image.fromarray((m * 255).astype(np.uint8)).save(out / f"masks/{i:05d}.png")
            rec.update(mask=f"masks/{i:05d}.png", kind=kind)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / rec["image"])
        lines.append(json.dumps(rec))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out / "manifest.jsonl"
