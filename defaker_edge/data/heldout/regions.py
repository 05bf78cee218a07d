"""Region shapes for the edits: smooth blobs, polygons, ellipses, rectangles (boolean masks)."""

from __future__ import annotations

import cv2
import numpy as np


def blob(rng: np.random.Generator, h: int, w: int, frac: tuple[float, float] = (0.01, 0.12)) -> np.ndarray:
    """A random object-like region covering about `frac` of the image, anywhere in it."""
    area = rng.uniform(*frac) * h * w
    r = float(np.sqrt(area / np.pi))
    cy = int(rng.uniform(r * 0.6, max(r * 0.6 + 1, h - r * 0.6)))
    cx = int(rng.uniform(r * 0.6, max(r * 0.6 + 1, w - r * 0.6)))
    m = np.zeros((h, w), np.uint8)
    shape = rng.integers(0, 4)
    if shape == 0:  # star-ish polygon with jittered radii
        k = int(rng.integers(5, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = r * rng.uniform(0.55, 1.35, k)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    elif shape == 1:
        ax = (max(3, int(r * rng.uniform(0.6, 1.5))), max(3, int(r * rng.uniform(0.6, 1.5))))
        cv2.ellipse(m, (cx, cy), ax, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif shape == 2:
        a, b = r * rng.uniform(0.7, 1.6), r * rng.uniform(0.5, 1.3)
        cv2.rectangle(m, (int(cx - a), int(cy - b)), (int(cx + a), int(cy + b)), 1, -1)
    else:  # a few overlapping circles: irregular but smooth outline
        for _ in range(int(rng.integers(3, 7))):
            ox, oy = rng.normal(0, r * 0.45, 2)
            cv2.circle(m, (int(cx + ox), int(cy + oy)), max(3, int(r * rng.uniform(0.35, 0.7))), 1, -1)
    return m.astype(bool)


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Float alpha in [0, 1]: the mask blurred, so the edit fades out at its border."""
    a = mask.astype(np.float32)
    if sigma > 0:
        k = int(2 * round(3 * sigma) + 1)
        a = cv2.GaussianBlur(a, (k, k), sigma)
    return np.clip(a, 0, 1)


def blend(base: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = base.astype(np.float32) * (1 - alpha[..., None]) + top.astype(np.float32) * alpha[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The pixel-exact mask: every pixel whose value differs in any channel."""
    return np.any(a != b, axis=-1) if a.ndim == 3 else a != b
