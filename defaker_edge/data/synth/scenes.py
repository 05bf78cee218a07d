"""Authentic natural sources: procedural scenes and the real photographs bundled in assets/photos.

Photos are randomly cropped, rescaled, flipped and colour-shifted, so a dozen files give many
distinct sources, and splicing from a real photo into a real photo exists. Procedural scenes
(gradients, shapes, textures, blurred noise fields, optics blur and sensor noise) add variety the
photos lack. See assets/LICENSES.md for the photos' sources and licenses.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..io import load_dataset_image
from .postprocess import add_noise, colour_jitter, gaussian, resize

PHOTO_DIR = Path(__file__).resolve().parents[2] / "assets" / "photos"
PHOTO_EXTS = (".png", ".jpg", ".jpeg")


@lru_cache(maxsize=1)
def photos() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, RGB uint8) of every bundled photo, decoded once per process, in name order."""
    if not PHOTO_DIR.is_dir():
        return ()
    files = sorted(p for p in PHOTO_DIR.iterdir() if p.suffix.lower() in PHOTO_EXTS)
    return tuple((p.name, load_dataset_image(p)) for p in files)


def _is_grey(img: np.ndarray) -> bool:
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))


def photo_source(rng: np.random.Generator, h: int, w: int, exclude: str | None = None
                 ) -> tuple[np.ndarray, str]:
    """A random crop of a bundled photo, rescaled to (h, w), flipped and colour-shifted."""
    pool = [p for p in photos() if p[0] != exclude] or list(photos())
    name, ph = pool[int(rng.integers(len(pool)))]
    H, W = ph.shape[:2]
    smin = max(h / H, w / W)  # the smallest scale at which an (h, w) output fits in the photo
    s = max(smin, float(np.exp(rng.uniform(np.log(0.5), np.log(1.6)))))
    ch, cw = min(H, int(np.ceil(h / s))), min(W, int(np.ceil(w / s)))
    y0, x0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    img = resize(ph[y0:y0 + ch, x0:x0 + cw], h, w, rng)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if _is_grey(img) and rng.random() < 0.5:
        tint = rng.uniform(0.85, 1.1, 3)  # a toned print rather than pure grey
        img = np.clip(np.rint(img * tint), 0, 255).astype(np.uint8)
    img = colour_jitter(rng, np.ascontiguousarray(img), strength=1.5)
    return img, f"photo:{name}"


def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _texture(rng, h, w) -> np.ndarray:
    """float32 [h, w] in about [-1, 1]: stripes, checker, or blurred noise."""
    kind = int(rng.integers(3))
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    if kind == 0:
        th = rng.uniform(0, np.pi)
        period = rng.uniform(4, 40)
        return np.sin((xx * np.cos(th) + yy * np.sin(th)) * 2 * np.pi / period).astype(np.float32)
    if kind == 1:
        c = rng.uniform(6, 48)
        return (((xx // c + yy // c) % 2) * 2 - 1).astype(np.float32)
    n = gaussian(rng, (h, w))
    return cv2.GaussianBlur(n, (0, 0), rng.uniform(0.7, 3.0)) * 2.0


def procedural_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient sky/ground, a low-frequency colour field, shapes (some textured), optics blur, noise."""
    # background: a linear gradient between two colours plus a smooth colour field
    c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    th = rng.uniform(0, 2 * np.pi)
    # both parts are smooth, so build them at 1/8 size and upsample once (linear is exact for a ramp)
    sh, sw = max(2, h // 8), max(2, w // 8)
    ys, xs = np.arange(sh, dtype=np.float32), np.arange(sw, dtype=np.float32)
    t = xs[None, :] * np.float32(np.cos(th) / sw) + ys[:, None] * np.float32(np.sin(th) / sh)
    t = (t - t.min()) / max(1e-6, float(np.ptp(t)))
    gh, gw = int(rng.integers(3, 10)), int(rng.integers(3, 10))
    field = cv2.resize(rng.normal(0, 30, (gh, gw, 3)).astype(np.float32), (sw, sh), interpolation=cv2.INTER_CUBIC)
    small = cv2.convertScaleAbs(np.clip(c0 + t[..., None] * (c1 - c0) + field, 0, 255))
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    # shapes: most solid (cheap, drawn in place), a few textured
    n_shapes = int(rng.integers(4, 20))
    scale = min(h, w)
    for i in range(n_shapes):
        kind = int(rng.integers(5))
        col = _colour(rng)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(scale * rng.uniform(0.03, 0.3))
        textured = i < 3 and rng.random() < 0.5
        target = np.zeros((h, w), np.uint8) if textured else img
        colour = 255 if textured else col
        lt = cv2.LINE_AA if not textured and rng.random() < 0.7 else cv2.LINE_8
        if kind == 0:
            cv2.circle(target, (cx, cy), r, colour, -1, lt)
        elif kind == 1:
            cv2.ellipse(target, (cx, cy), (r, max(2, int(r * rng.uniform(0.3, 1)))), float(rng.uniform(0, 180)),
                        0, 360, colour, -1, lt)
        elif kind == 2:
            cv2.rectangle(target, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1, lt)
        elif kind == 3:
            pts = (np.array([[cx, cy]]) + rng.integers(-r, r + 1, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.fillPoly(target, [pts], colour, lt)
        else:
            p2 = (int(cx + rng.integers(-2 * r, 2 * r + 1)), int(cy + rng.integers(-2 * r, 2 * r + 1)))
            cv2.line(target, (cx, cy), p2, colour, max(1, r // 8), lt)
        if textured:
            m = target > 0
            if m.any():
                y0, y1 = np.flatnonzero(m.any(1))[[0, -1]]
                x0, x1 = np.flatnonzero(m.any(0))[[0, -1]]
                sub = m[y0:y1 + 1, x0:x1 + 1]
                tex = _texture(rng, y1 - y0 + 1, x1 - x0 + 1)[..., None]
                base = np.array(col, np.float32)
                amp = rng.uniform(15, 60)
                patch = np.clip(base + amp * tex, 0, 255).astype(np.uint8)
                img[y0:y1 + 1, x0:x1 + 1][sub] = patch[sub]
    # optics (defocus/lens blur) and a vignette, then sensor noise: a camera-like look
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.6)))
    if rng.random() < 0.4:
        r2 = (ys[:, None] / sh - 0.5) ** 2 + (xs[None, :] / sw - 0.5) ** 2
        vig = cv2.resize(1.0 - np.float32(rng.uniform(0.1, 0.5)) * r2 * 2, (w, h), interpolation=cv2.INTER_LINEAR)
        img = cv2.convertScaleAbs(img * vig[..., None])
    return add_noise(rng, img, float(rng.uniform(0.5, 3.5)))


def natural_source(rng: np.random.Generator, h: int, w: int, photo_p: float = 0.6,
                   exclude: str | None = None) -> tuple[np.ndarray, str]:
    """A natural authentic image of exactly (h, w): a bundled photo (p=photo_p) or a procedural scene."""
    if photos() and rng.random() < photo_p:
        return photo_source(rng, h, w, exclude=exclude)
    return procedural_scene(rng, h, w), "procedural:scene"
