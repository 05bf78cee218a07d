"""The compression-history stream (DESIGN §4): block-DCT coefficients of a tile's luma on the
8×8 JPEG grid, in units of the file's quantization steps. numpy only: the runtime, the training
crops and the export checks all call this one function, so training and inference see the same
numbers.

Why this representation (CAT-Net, DocTamper's DTD): a JPEG decoder writes pixels whose block DCT,
divided by the file's quantization table, sits on integers. A region that was compressed twice
(at another quality, or on a shifted grid), or never, leaves a different histogram of those
integers per frequency than its host: gaps and peaks at multiples of the earlier step, or none.
The model sees |round(DCT / q)| clipped to `clip`, one channel per frequency, and one-hots it
itself (a histogram over neighbouring blocks is then a learned conv).

Where the table is unknown (PNG, WebP, a tile off the 8×8 grid) the table is all zeros: the
coefficients are then taken in grey levels (step 1) and the model is told by the zero table
(training covers that case too).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

BLOCK = 8
# natural (row-major) index of each zigzag position: JPEG's coefficient order, low frequencies first
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14,
    21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53,
    60, 61, 54, 47, 55, 62, 63], dtype=np.int64)
NO_TABLE = np.zeros(64, np.float32)  # the table of a file without one


@lru_cache(maxsize=1)
def dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II: JPEG's forward DCT is D @ block @ D.T."""
    u = np.arange(BLOCK)[:, None]
    x = np.arange(BLOCK)[None, :]
    d = np.cos((2 * x + 1) * u * np.pi / (2 * BLOCK)) * np.sqrt(2.0 / BLOCK)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def frequencies(n: int) -> np.ndarray:
    """Natural indices of the first `n` AC coefficients in zigzag order (the DC is left out: it is the
    block's mean brightness, saturated by any clip, and says nothing about compression history)."""
    if not 1 <= n <= 63:
        raise ValueError(f"the DCT stream takes 1..63 AC frequencies, got {n}")
    return ZIGZAG[1:1 + n]


# uint8 value -> float32 product with its BT.601 weight, per channel: luma() sums the same float32
# products in the same order as (r*0.299 + g*0.587) + b*0.114 - 128, so it is bit-identical, but
# three table lookups cost a fraction of converting the tiles to float first
_LUMA = np.arange(256, dtype=np.float32)[None, :] * np.asarray([0.299, 0.587, 0.114], np.float32)[:, None]


def luma(tiles: np.ndarray) -> np.ndarray:
    """uint8 [N, T, T, 3] RGB -> float32 [N, T, T]: JPEG's Y (ITU-R BT.601), level-shifted by 128."""
    y = np.take(_LUMA[0], tiles[..., 0])
    y += np.take(_LUMA[1], tiles[..., 1])
    y += np.take(_LUMA[2], tiles[..., 2])
    y -= np.float32(128.0)
    return y


@lru_cache(maxsize=8)
def _basis(n_freq: int) -> np.ndarray:
    """[64, F] float32: column f is the 8x8 DCT basis image of AC frequency f, so one GEMM of the
    blocks [B, 64] with it gives just the F coefficients the model reads (not all 64)."""
    d = dct_matrix().astype(np.float64)
    fr = frequencies(n_freq)
    u, v = fr // BLOCK, fr % BLOCK
    return np.ascontiguousarray((d[u][:, :, None] * d[v][:, None, :]).reshape(n_freq, 64).T, dtype=np.float32)


def dct_stream(tiles: np.ndarray, qtables: np.ndarray, n_freq: int, clip: int) -> np.ndarray:
    """uint8 tiles [N, T, T, 3] + luma tables [N, 64] (natural order; all zeros = none) ->
    float32 [N, n_freq, T/8, T/8]: min(|round(DCT(Y) / q)|, clip) for the first `n_freq` AC
    frequencies, per 8×8 block of each tile's own grid.

    Cost, 9 tiles of 512 (a 1024² check), 2 cores: luma by table lookup, one transpose into
    blocks and one [36864, 64] x [64, 24] GEMM, ~15 ms (the separable all-64 version took ~30)."""
    n, t = tiles.shape[:2]
    if t % BLOCK or tiles.shape[2] % BLOCK:
        raise ValueError(f"tiles must be a multiple of {BLOCK} px, got {tiles.shape[1:3]}")
    q = np.asarray(qtables, np.float32).reshape(-1, 64)
    if q.shape[0] == 1 and n > 1:
        q = np.broadcast_to(q, (n, 64))
    if q.shape[0] != n:
        raise ValueError(f"{n} tiles but {q.shape[0]} quantization tables")
    h, w = t // BLOCK, tiles.shape[2] // BLOCK
    blocks = luma(tiles).reshape(n, h, BLOCK, w, BLOCK).transpose(0, 1, 3, 2, 4).reshape(-1, 64)
    coef = (blocks @ _basis(n_freq)).reshape(n, h * w, n_freq)
    coef /= np.where(q > 0, q, 1.0)[:, None, frequencies(n_freq)]
    np.rint(coef, out=coef)
    np.abs(coef, out=coef)
    np.minimum(coef, np.float32(clip), out=coef)
    return np.ascontiguousarray(coef.transpose(0, 2, 1)).reshape(n, n_freq, h, w)


def read_qtable(src) -> np.ndarray:
    """The luma quantization table of an image file (path, bytes or file object), natural order,
    float32 [64]; NO_TABLE for a file that is not a baseline/progressive JPEG or has none.
    Reads the header only (Pillow parses the tables when it opens the file, before any decoding)."""
    from PIL import Image

    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(src))
    try:
        with Image.open(src) as im:
            tables = getattr(im, "quantization", None) or {}
    except Exception:  # an unreadable file gets its error from the decoder, not here
        return NO_TABLE.copy()
    t = tables.get(0)
    if t is None or len(t) != 64:
        return NO_TABLE.copy()
    return np.asarray(t, np.float32)


def tile_tables(qtable: np.ndarray, origins: list[tuple[int, int]]) -> np.ndarray:
    """[N, 64] per-tile tables: the file's table for tiles on its 8×8 grid, NO_TABLE for a tile off it
    (a border tile pulled flush with the edge): its blocks are not the encoder's."""
    q = np.asarray(qtable, np.float32).reshape(64)
    out = np.empty((len(origins), 64), np.float32)
    for i, (y, x) in enumerate(origins):
        out[i] = q if (y % BLOCK == 0 and x % BLOCK == 0) else NO_TABLE
    return out
