"""AIGC stand-ins: whole images carrying generator traces.

Label convention: a generated image has label 1 and an ALL-ONES mask (PNG of 255s at the image's
size): every pixel was made by the generator, so every pixel is "manipulated". The authentic
images of this domain are the same kinds of content (photos, scenes, faces) without the traces.

Traces, any one to three per image (recorded in the manifest's `traces`):
- upsample: a 2x decoder step like a transposed convolution whose kernel overlaps unevenly,
  so even and odd output phases get different gains: a checkerboard at the Nyquist frequency.
- spectral: faint periodic patterns (periods 2-16 px), i.e. peaks in the Fourier spectrum, as
  upsampling layers and patch embeddings leave.
- smooth: over-smooth, noiseless texture (edge-preserving filtering / a down-up resample):
  generators under-produce sensor noise and fine texture.
"""

from __future__ import annotations

import cv2
import numpy as np


def _upsample(rng, img):
    h, w = img.shape[:2]
    hh, ww = (h + 1) // 2, (w + 1) // 2
    small = cv2.resize(img, (ww, hh), interpolation=cv2.INTER_AREA).astype(np.float32)
    e = float(rng.uniform(0.004, 0.03))  # subtle: +-0.4..3% gain between phases
    # 1-D kernel [p, q, p] on a zero-inserted signal: even phase gain q, odd phase 2p; q != 2p
    q, p = 1.0 + e, (1.0 - e) / 2.0
    k = np.array([p, q, p], np.float32)
    up = np.zeros((2 * hh, 2 * ww, 3), np.float32)
    up[::2, ::2] = small
    out = cv2.sepFilter2D(up, -1, k, k, borderType=cv2.BORDER_REFLECT)[:h, :w]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), f"upsample{e:.3f}"


def _spectral(rng, img):
    h, w = img.shape[:2]
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    pat = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        f = np.float32(2 * np.pi / float(rng.choice([2.0, 4.0, 8.0, 16.0, 5.33])))
        d = int(rng.integers(3))  # horizontal, vertical or diagonal waves
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        amp = np.float32(rng.uniform(0.6, 2.0))
        if d == 0:
            pat += amp * np.cos(f * xs + phase)
        elif d == 1:
            pat += amp * np.cos(f * ys + phase)
        else:  # cos(a+b) = cos a cos b - sin a sin b: two outer products instead of a full grid of cos
            pat += amp * (np.cos(f * xs) * np.cos(f * ys + phase) - np.sin(f * xs) * np.sin(f * ys + phase))
    weights = rng.uniform(0.5, 1.0, 3).astype(np.float32)
    out = img.astype(np.float32) + pat[..., None] * weights
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), "spectral"


def _smooth(rng, img):
    if rng.random() < 0.5:
        out = cv2.bilateralFilter(img, int(rng.choice([5, 7])), float(rng.uniform(25, 60)), float(rng.uniform(3, 7)))
        return out, "smooth_bilateral"
    h, w = img.shape[:2]
    f = float(rng.uniform(0.4, 0.7))
    small = cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), "smooth_resample"


_TRACES = (_smooth, _upsample, _spectral)


def generate(rng: np.random.Generator, base: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Apply one to three generator traces, always in the order smooth -> upsample -> spectral
    (texture is made first, decoder upsampling last)."""
    chosen = [t for t in _TRACES if rng.random() < 0.5]
    if not chosen:
        chosen = [_TRACES[int(rng.integers(len(_TRACES)))]]
    out, names = base, []
    for t in chosen:
        out, name = t(rng, out)
        names.append(name)
    return out, names
