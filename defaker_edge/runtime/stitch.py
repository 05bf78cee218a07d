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

    def _cells(self, y0: int, x0: int) -> tuple[slice, slice]:
        ch, cw = self.acc.shape
        # only a border-flush tile sits off the 4-px grid; rounding it up (towards the border it is
        # flush with) keeps the image's last cells covered; the shift is under one cell
        y = min(-(-y0 // STRIDE), ch - self.q)
        x = min(-(-x0 // STRIDE), cw - self.q)
        return slice(y, y + self.q), slice(x, x + self.q)

    def add(self, y0: int, x0: int, mask_logits: np.ndarray) -> None:
        """Add one tile's [T/4, T/4] (or [1, T/4, T/4]) logits; (y0, x0) is its full-res origin."""
        m = np.asarray(mask_logits, dtype=np.float32).reshape(self.q, self.q)
        cells = self._cells(y0, x0)
        self.acc[cells] += self.win * m
        self.wsum[cells] += self.win

    def replace(self, y0: int, x0: int, old: np.ndarray, new: np.ndarray) -> None:
        """Swap a tile's logits that `add` took (`old`) for `new` (the band's FP32 re-run of that tile)."""
        d = (np.asarray(new, np.float32).reshape(self.q, self.q) - np.asarray(old, np.float32).reshape(self.q, self.q))
        self.acc[self._cells(y0, x0)] += self.win * d

    def logits_quarter(self) -> np.ndarray:
        """float32 [ceil(h/4), ceil(w/4)] blended logits."""
        a = self.acc[:self.hq, :self.wq]
        w = self.wsum[:self.hq, :self.wq]
        out = np.zeros_like(a)
        np.divide(a, w, out=out, where=w > 0)
        return out

    def probs_full(self, dtype: str | np.dtype = np.float16, chunk_rows: int = 256) -> np.ndarray:
        return upsample_probs(self.logits_quarter(), self.h, self.w, dtype=dtype, chunk_rows=chunk_rows)


# x4 bilinear with half-pixel centres (torch's align_corners=False), as fixed phases: output row
# 4i+k sits at input coordinate i + (k - 1.5)/4, so it mixes rows i-1, i, i+1 with these weights
# (edge rows repeat, which is the clamp at the border). Shifted slices instead of gathers: ~2x faster.
_PHASES = np.array([[0.375, 0.625, 0.0], [0.125, 0.875, 0.0], [0.0, 0.875, 0.125], [0.0, 0.625, 0.375]],
                   np.float32)


def _up4_rows(p: np.ndarray, out: np.ndarray) -> None:
    """p: [n+2, m] edge-padded rows; out: [n, 4, m] (rows 4i..4i+3 of the x4 upsample)."""
    a, b, c = p[:-2], p[1:-1], p[2:]
    for k, (wa, wb, wc) in enumerate(_PHASES):
        o = out[:, k]
        if wa:
            np.multiply(a, wa, out=o)
            o += wb * b
        else:
            np.multiply(b, wb, out=o)
            o += wc * c


def upsample_probs(logits_q: np.ndarray, h: int, w: int, *, dtype: str | np.dtype = np.float16,
                   chunk_rows: int = 256) -> np.ndarray:
    """Quarter-res logits [ceil(h/4), ceil(w/4)] -> [h, w] probabilities (float16/float32 in [0,1], or
    uint8 0..255).

    Bilinear on the logits, then sigmoid, about `chunk_rows` output rows at a time so the float32
    working set stays at chunk_rows x w.
    """
    dtype = np.dtype(dtype)
    lq = np.asarray(logits_q, dtype=np.float32)
    hq, wq = lq.shape
    if hq < -(-h // STRIDE) or wq < -(-w // STRIDE):
        raise ValueError(f"logits {lq.shape} too small for a {h}x{w} mask")
    pad = np.pad(lq, 1, mode="edge")  # [hq+2, wq+2]
    out = np.empty((h, w), dtype=dtype)
    step = max(1, chunk_rows // STRIDE)
    for r in range(0, -(-h // STRIDE), step):
        n = min(step, hq - r)
        rows = np.empty((n, STRIDE, wq + 2), np.float32)
        _up4_rows(pad[r:r + n + 2], rows)
        rows = rows.reshape(n * STRIDE, wq + 2)
        full = np.empty((n * STRIDE, wq, STRIDE), np.float32)
        _up4_rows(rows.T, full.transpose(1, 2, 0))  # the same phases across columns
        y0, y1 = STRIDE * r, min(h, STRIDE * (r + n))
        v = full.reshape(n * STRIDE, wq * STRIDE)[:y1 - y0, :w]
        # sigmoid in place: 0.5 * (1 + tanh(x / 2))
        v *= 0.5
        np.tanh(v, out=v)
        v += 1.0
        v *= 0.5
        if dtype == np.uint8:
            v *= 255.0
            np.rint(v, out=v)
        out[y0:y1] = v
    return out
