"""Stitching tile mask logits into one image mask, with bounded memory (DESIGN §5).

The model gives mask logits at T/4 per tile. They are accumulated at 1/4 resolution with the
blending window (tiling.blend_window), so seams between overlapping tiles do not show and a
100-megapixel image needs only two float32 planes of H/4 × W/4 (about 50 MB). The full-resolution
mask is made on request by bilinear upsampling (half-pixel centres, like torch's
align_corners=False) in row chunks, then a sigmoid, and is returned as float16 or uint8: a float32
100 MP mask alone would be 400 MB.
"""

from __future__ import annotations

import math

import numpy as np

from .tiling import blend_window

STRIDE = 4  # mask logits are at T/4 (StudentConfig.mask_stride)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for large |x|, unlike 1/(1+exp(-x))
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class MaskStitcher:
    """Accumulates tiles' mask logits for one h×w image at 1/4 resolution."""

    def __init__(self, h: int, w: int, tile: int, overlap: int):
        if tile % STRIDE:
            raise ValueError(f"tile {tile} is not a multiple of {STRIDE}")
        self.h, self.w, self.q = h, w, tile // STRIDE
        self.hq, self.wq = math.ceil(h / STRIDE), math.ceil(w / STRIDE)
        # canvas at least one tile large: a small image's tile is padded past its border
        ch, cw = max(self.hq, self.q), max(self.wq, self.q)
        self.acc = np.zeros((ch, cw), dtype=np.float32)
        self.wsum = np.zeros((ch, cw), dtype=np.float32)
        self.win = blend_window(self.q, max(0, overlap // STRIDE))

    def add(self, y0: int, x0: int, mask_logits: np.ndarray) -> None:
        """Add one tile's [T/4, T/4] (or [1, T/4, T/4]) logits; (y0, x0) is its full-res origin."""
        m = np.asarray(mask_logits, dtype=np.float32).reshape(self.q, self.q)
        ch, cw = self.acc.shape
        # only a border-flush tile sits off the 4-px grid; rounding it up (towards the border it is
        # flush with) keeps the image's last cells covered; the shift is under one cell
        y = min(-(-y0 // STRIDE), ch - self.q)
        x = min(-(-x0 // STRIDE), cw - self.q)
        self.acc[y:y + self.q, x:x + self.q] += self.win * m
        self.wsum[y:y + self.q, x:x + self.q] += self.win

    def logits_quarter(self) -> np.ndarray:
        """float32 [ceil(h/4), ceil(w/4)] blended logits."""
        a = self.acc[:self.hq, :self.wq]
        w = self.wsum[:self.hq, :self.wq]
        out = np.zeros_like(a)
        np.divide(a, w, out=out, where=w > 0)
        return out

    def probs_quarter(self) -> np.ndarray:
        return sigmoid(self.logits_quarter()).astype(np.float32)

    def probs_full(self, dtype: str | np.dtype = np.float16, chunk_rows: int = 256) -> np.ndarray:
        return upsample_probs(self.logits_quarter(), self.h, self.w, dtype=dtype, chunk_rows=chunk_rows)


def _axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = (np.arange(n_out, dtype=np.float64) + 0.5) / STRIDE - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (s - i0).astype(np.float32)


def upsample_probs(logits_q: np.ndarray, h: int, w: int, *, dtype: str | np.dtype = np.float16,
                   chunk_rows: int = 256) -> np.ndarray:
    """Quarter-res logits -> [h, w] probabilities (float16/float32 in [0,1], or uint8 0..255).

    Bilinear on the logits, then sigmoid, `chunk_rows` output rows at a time so the float32
    working set stays at chunk_rows × w.
    """
    dtype = np.dtype(dtype)
    lq = np.asarray(logits_q, dtype=np.float32)
    y0, y1, wy = _axis(h, lq.shape[0])
    x0, x1, wx = _axis(w, lq.shape[1])
    out = np.empty((h, w), dtype=dtype)
    for r in range(0, h, chunk_rows):
        sl = slice(r, min(h, r + chunk_rows))
        a = wy[sl, None]
        rows = lq[y0[sl]] * (1.0 - a) + lq[y1[sl]] * a  # [c, wq]
        v = rows[:, x0] * (1.0 - wx) + rows[:, x1] * wx  # [c, w]
        p = sigmoid(v)
        if dtype == np.uint8:
            out[sl] = np.rint(p * 255.0).astype(np.uint8)
        else:
            out[sl] = p
    return out
