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


_W = np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma weights


def luma(tiles: np.ndarray) -> np.ndarray:
    """uint8 [N, T, T, 3] RGB -> float32 [N, T, T]: JPEG's Y (ITU-R BT.601), level-shifted by 128,
    as float32 (r*0.299 + g*0.587) + b*0.114 - 128 in that order (training and the runtime agree
    bit for bit). One contiguous cast to float, then strided multiply-adds: 1.9 ms for a 1024²
    image on one Zen 4 core, against 3.6 ms for the three per-channel table lookups it replaces."""
    f = tiles.astype(np.float32)
    y = np.multiply(f[..., 0], _W[0])
    y += f[..., 1] * _W[1]
    y += f[..., 2] * _W[2]
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


# rows of blocks per matrix product: small enough that OpenBLAS runs each on the calling thread.
# Why: one [16384, 64] x [64, 24] product (a 1024² image) woke OpenBLAS's thread pool, which then
# span on the cores ONNX Runtime needed next (up to 1.26x slower runs) and fought the other prep
# thread (measured under load, 2-core Zen 4: 8.0 ms threaded vs 0.7 ms in chunks of 512, one thread).
# numpy only: no threadpoolctl in the runtime's dependencies, and no process-wide BLAS setting.
_GEMM_ROWS = 512


def _coefficients(blocks: np.ndarray, n_freq: int) -> np.ndarray:
    """float32 [M, 64] level-shifted luma blocks -> [M, n_freq] DCT coefficients (see _GEMM_ROWS)."""
    basis = _basis(n_freq)
    out = np.empty((blocks.shape[0], n_freq), np.float32)
    for a in range(0, blocks.shape[0], _GEMM_ROWS):
        np.matmul(blocks[a:a + _GEMM_ROWS], basis, out=out[a:a + _GEMM_ROWS])
    return out


def _quantize(coef: np.ndarray, q: np.ndarray, clip: int) -> np.ndarray:
    """In place: coef [..., F] / q [..., F] (0: step 1), rounded, |.|, clipped to `clip`."""
    coef /= np.where(q > 0, q, np.float32(1.0))
    np.rint(coef, out=coef)
    np.abs(coef, out=coef)
    np.minimum(coef, np.float32(clip), out=coef)
    return coef


def dct_stream(tiles: np.ndarray, qtables: np.ndarray, n_freq: int, clip: int) -> np.ndarray:
    """uint8 tiles [N, T, T, 3] + luma tables [N, 64] (natural order; all zeros = none) ->
    float32 [N, n_freq, T/8, T/8]: min(|round(DCT(Y) / q)|, clip) for the first `n_freq` AC
    frequencies, per 8×8 block of each tile's own grid.

    Cost, 9 tiles of 512 (a 1024² check), 2 cores: luma (a cast and multiply-adds), one transpose into
    blocks and one [36864, 64] x [64, 24] GEMM, ~15 ms (the separable all-64 version took ~30).
    The runtime computes the stream once per image instead (image_stream) and slices it."""
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
    coef = _coefficients(blocks, n_freq).reshape(n, h * w, n_freq)
    _quantize(coef, q[:, None, frequencies(n_freq)], clip)
    return np.ascontiguousarray(coef.transpose(0, 2, 1)).reshape(n, n_freq, h, w)


# block rows per band of image_stream: a band's luma and blocks stay in cache (a 1024² image: 3.7 ms
# in bands of 8 to 64 block rows, 8.6 ms all at once), and each numpy call is long enough that the
# runtime's two prep threads (each half the image) overlap: the GIL is taken back after every call, so
# many short calls serialize them (2-core Zen 4, two threads: 3.6 ms in bands of 8, 2.6 ms in bands of
# 32, one thread 3.7 ms either way)
_BAND = 32


def image_stream(img: np.ndarray, qtable: np.ndarray | None, n_freq: int, clip: int) -> np.ndarray:
    """uint8 [H, W, 3] + the file's luma table (None or zeros: none) -> uint8 [H//8, W//8, n_freq]:
    dct_stream's values for every whole 8×8 block of the image's own grid, computed once, channels-last
    (the layout packages take, tiling.DCT_NHWC; and the GEMM's own, so no transpose).

    A tile whose origin is on the grid and which lies inside the whole blocks reads its stream as
    a slice (stream_tile): a 1024² check's 9 overlapping tiles cost one image's transform, not 9
    tiles' (1.8x the pixels). uint8 holds the values exactly (clip <= 127) in a quarter of the memory."""
    h, w = img.shape[0] // BLOCK, img.shape[1] // BLOCK
    q = NO_TABLE if qtable is None else np.asarray(qtable, np.float32).reshape(64)
    qf = q[frequencies(n_freq)]
    out = np.empty((h, w, n_freq), np.uint8)
    for a in range(0, h, _BAND):
        b = min(h, a + _BAND)
        y = luma(img[None, a * BLOCK:b * BLOCK, :w * BLOCK])[0]
        blocks = y.reshape(b - a, BLOCK, w, BLOCK).transpose(0, 2, 1, 3).reshape(-1, 64)
        coef = _quantize(_coefficients(blocks, n_freq), qf, clip)
        out[a:b] = coef.reshape(b - a, w, n_freq)
    return out


def stream_tile(stream: np.ndarray, y: int, x: int, tile: int) -> np.ndarray | None:
    """The [T/8, T/8, F] slice of image_stream's output for the tile at (y, x), or None when the tile
    is off the grid or reaches past the image's whole blocks (it needs its own dct_stream)."""
    t = tile // BLOCK
    if y % BLOCK or x % BLOCK or y // BLOCK + t > stream.shape[0] or x // BLOCK + t > stream.shape[1]:
        return None
    return stream[y // BLOCK:y // BLOCK + t, x // BLOCK:x // BLOCK + t]


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
