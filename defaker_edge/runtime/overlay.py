"""Overlays for people: the image with a red tint where the mask says manipulated."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

RED = np.array([255.0, 0.0, 0.0], dtype=np.float32)


def overlay(img: np.ndarray, mask: np.ndarray, *, alpha: float = 0.55, chunk_rows: int = 512) -> np.ndarray:
    """uint8 [H,W,3] image + [H,W] mask probabilities (float in [0,1] or uint8 0..255) -> uint8 [H,W,3].

    Each pixel is blended towards red by alpha × its probability, so a confident region is clearly
    red and an unsure one only faintly tinted. Row chunks keep a 100 MP image's float copy small.
    """
    if img.shape[:2] != mask.shape[:2]:
        raise ValueError(f"mask {mask.shape[:2]} does not match image {img.shape[:2]}")
    scale = 1.0 / 255.0 if mask.dtype == np.uint8 else 1.0
    out = np.empty_like(img)
    for r in range(0, img.shape[0], chunk_rows):
        sl = slice(r, r + chunk_rows)
        a = (mask[sl].astype(np.float32) * (scale * alpha))[..., None]
        out[sl] = np.clip(np.rint(img[sl].astype(np.float32) * (1.0 - a) + RED * a), 0, 255).astype(np.uint8)
    return out


def save_overlay(path: str | os.PathLike, img: np.ndarray, mask: np.ndarray, quality: int = 90) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(img, mask)).save(path, format="JPEG", quality=quality)
