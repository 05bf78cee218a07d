"""Native-resolution tiling (DESIGN §5), numpy only: the runtime, calibration and distillation share it.

The image is never rescaled. It is cut into T×T tiles whose origins sit on the 8×8 JPEG grid
(multiples of 8), so every tile sees the same block alignment the camera's encoder used. Tiles
overlap by at least `overlap` pixels; the last row/column is pulled back to end at the border
(then snapped down to the grid). An image smaller than T in a dimension is padded with its mean
grey (normalised value ~0) rather than mirrored: a mirror would look like copy-move to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ImageNet statistics, the convention of both the teacher's towers and the students.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRID = 8


@dataclass(frozen=True)
class TileSpec:
    tile: int = 512
    overlap: int = 64
    grid: int = GRID

    @property
    def stride(self) -> int:
        return max(self.grid, ((self.tile - self.overlap) // self.grid) * self.grid)


def default_overlap(tile: int) -> int:
    """The tile overlap a package gets unless told otherwise (export, thresholds and the gate share it)."""
    return min(64, tile // 4)


def check_overlap(overlap: int, tile: int, grid: int = GRID) -> int:
    """`overlap` if it is a usable tile overlap for `tile`, else ValueError saying why.

    At most half a tile (the blend window's ramps would cross) and on the grid (tile origins are
    snapped to it, so 60 would tile like 64)."""
    if not 0 <= overlap <= tile // 2 or overlap % grid:
        raise ValueError(f"--overlap must be a multiple of {grid} in [0, {tile // 2}] for {tile} px tiles, got {overlap}")
    return int(overlap)


def _axis_origins(length: int, tile: int, stride: int, grid: int) -> list[int]:
    if length <= tile:
        return [0]
    last = ((length - tile) // grid) * grid  # on the grid, never past the border
    origins = list(range(0, last + 1, stride))
    if origins[-1] != last:
        origins.append(last)
    if last + tile < length:
        # the grid snap left a strip of < 8 px at the border; one tile flush with the border
        # (off-grid, by necessity) covers it
        origins.append(length - tile)
    return origins


def tile_origins(h: int, w: int, spec: TileSpec = TileSpec()) -> list[tuple[int, int]]:
    """(y0, x0) of every tile, row-major. Covers every pixel of an h×w image."""
    ys = _axis_origins(h, spec.tile, spec.stride, spec.grid)
    xs = _axis_origins(w, spec.tile, spec.stride, spec.grid)
    return [(y, x) for y in ys for x in xs]


def cut_tiles(img: np.ndarray, origins: list[tuple[int, int]], tile: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [N, T, T, 3]; padding with the image's mean colour where it is smaller."""
    h, w = img.shape[:2]
    out = np.empty((len(origins), tile, tile, 3), dtype=np.uint8)
    fill = None
    for i, (y, x) in enumerate(origins):
        crop = img[y:y + tile, x:x + tile]
        if crop.shape[0] == tile and crop.shape[1] == tile:
            out[i] = crop
            continue
        if fill is None:
            fill = np.rint(np.asarray(MEAN) * 255).astype(np.uint8)
        out[i] = fill
        out[i, :crop.shape[0], :crop.shape[1]] = crop
    return out


# uint8 value -> normalised float32, per channel: the same float32 arithmetic as a direct
# (x/255 - mean)/std, so results are bit-identical, but a table lookup is ~5x faster (it was a
# quarter of the CPU time of a 1024² check on 2 cores).
_LUT = ((np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0))[None, :]
        - np.asarray(MEAN, dtype=np.float32)[:, None]) / np.asarray(STD, dtype=np.float32)[:, None]


def normalize(tiles: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [N, T, T, 3] -> float32 [N, 3, T, T], (x/255 - mean) / std: the model's input.

    `out`, if given, is filled in place (the runtime's reusable batch buffer)."""
    n, h, w = tiles.shape[:3]
    if out is None:
        out = np.empty((n, 3, h, w), dtype=np.float32)
    for c in range(3):
        for i in range(n):
            np.take(_LUT[c], tiles[i, :, :, c], out=out[i, c], mode="clip")
    return out


# ---------------------------------------------------------------- model input formats
# A model file says which input it takes in its ONNX metadata (FORMAT_KEY); a file without one
# takes NORMALIZED, the contract's input (DESIGN §4).
FORMAT_KEY = "defaker.input_format"
NORMALIZED = "f32-nchw"  # float32 [N, 3, T, T], (x/255 - mean) / std
# uint8 [N, T/2+1, T/2+1, 12]: the tile padded by 1 px with RAW_FILL, then 2x2 space-to-depth,
# channel (dy*2 + dx)*3 + c holding pixel (2i+dy, 2j+dx) of colour c. The raw pixels, nothing
# rounded: the CPU INT8 model's input, with the normalization folded into its first conv
# (quantize.raw_input says why this layout)
RAW_S2D = "u8-s2d2"
# uint8 [N, T, T, 3]: the tiles as decoded, for a file that normalizes and computes its DCT stream
# itself (export.pixels_graph: one graph from pixels + table, for GPUs); it takes qtable beside
PIXELS = "u8-nhwc"
INPUT_FORMATS = (NORMALIZED, RAW_S2D, PIXELS)
# the mean colour rounded to a pixel value: RAW_S2D's padding stands in for the normalized
# input's zero padding (the exact mean), at most 0.47 grey levels off, on the pad ring only
RAW_FILL = np.rint(np.asarray(MEAN) * 255).astype(np.uint8)


def _known(value: str | None, default: str, known: tuple[str, ...], what: str) -> str:
    """`value`, or `default` for None/""; ValueError for one this runtime does not know."""
    value = value or default
    if value not in known:
        raise ValueError(f"unknown {what} {value!r} (this runtime knows {', '.join(known)}): "
                         "the package is newer than the runtime")
    return value


def _meta(model, key: str) -> str | None:
    """An ONNX ModelProto's metadata value (duck-typed: no onnx import here)."""
    return {p.key: p.value for p in model.metadata_props}.get(key)


def check_format(fmt: str | None) -> str:
    """`fmt`, or NORMALIZED for None/""; ValueError for a format this runtime does not know."""
    return _known(fmt, NORMALIZED, INPUT_FORMATS, "model input format")


def model_format(model) -> str:
    """The input format an ONNX ModelProto declares in its metadata."""
    return check_format(_meta(model, FORMAT_KEY))


def input_shape(fmt: str, tile: int) -> tuple[int, int, int]:
    """The model input's shape without the batch dim."""
    fmt = check_format(fmt)
    if fmt == RAW_S2D:
        return (tile // 2 + 1, tile // 2 + 1, 12)
    if fmt == PIXELS:
        return (tile, tile, 3)
    return (3, tile, tile)


def input_dtype(fmt: str) -> type:
    return np.uint8 if check_format(fmt) in (RAW_S2D, PIXELS) else np.float32


def tile_of(fmt: str, dims: list[int] | tuple[int, ...]) -> int:
    """The tile size from a model input's declared dims (batch first): the inverse of input_shape."""
    fmt = check_format(fmt)
    if fmt == RAW_S2D:
        return (int(dims[1]) - 1) * 2
    return int(dims[1]) if fmt == PIXELS else int(dims[-1])


def space_to_depth(tiles: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [N, T, T, 3] -> RAW_S2D uint8 [N, T/2+1, T/2+1, 12] (see RAW_S2D)."""
    n, t = tiles.shape[:2]
    if t % 2 or tiles.shape[2] != t:
        raise ValueError(f"space_to_depth needs square tiles of even size, got {tiles.shape[1:3]}")
    h = t // 2 + 1
    if out is None:
        out = np.empty((n, h, h, 12), dtype=np.uint8)
    elif out.dtype != np.uint8 or out.shape != (n, h, h, 12):
        raise ValueError(f"space_to_depth writes uint8 {(n, h, h, 12)}, got an out of {out.dtype} {out.shape}")
    pad = np.empty((n, t + 2, t + 2, 3), dtype=np.uint8)
    pad[:, 1:-1, 1:-1] = tiles
    pad[:, 0] = pad[:, -1] = RAW_FILL
    pad[:, :, 0] = pad[:, :, -1] = RAW_FILL
    # The (dy, dx, c) order makes each output pixel two 6-byte runs: a horizontal pixel pair of row
    # 2i, then of row 2i+1, i.e. 3 + 3 uint16 words (T even: rows are a whole number of words). Six
    # strided uint16 copies move them, each a tight loop over h words: 4 tiles of 576, 1 thread,
    # 1.0 ms against 2.1 ms for copying the runs as 6-byte void items (numpy calls memmove per item)
    # and 4x faster than numpy's transposing copy.
    if out.flags.c_contiguous:
        src = pad.reshape(n, t + 2, (t + 2) * 3).view(np.uint16)  # [n, T+2, 3(T+2)/2]: pixel pairs
        dst = out.reshape(n, h, h * 12).view(np.uint16)  # [n, h, 6h]: per output pixel, 3 words of each row
        for dy in (0, 1):
            for k in range(3):
                dst[:, :, dy * 3 + k::6] = src[:, dy::2, k::3]
    else:
        out.reshape(n, h, h, 2, 2, 3)[:] = pad.reshape(n, h, 2, h, 2, 3).transpose(0, 1, 3, 2, 4, 5)
    return out


def input_buffer(fmt: str, n: int, tile: int) -> np.ndarray:
    """An empty batch buffer of `n` model inputs in `fmt`."""
    return np.empty((n, *input_shape(fmt, tile)), dtype=input_dtype(fmt))


def prepare(tiles: np.ndarray, fmt: str = NORMALIZED, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 tiles [N, T, T, 3] -> the model input in `fmt` (written into `out` if given)."""
    fmt = check_format(fmt)
    if fmt == RAW_S2D:
        return space_to_depth(tiles, out)
    if fmt == PIXELS:
        if out is None:
            return np.ascontiguousarray(tiles, dtype=np.uint8)
        out[...] = tiles
        return out
    return normalize(tiles, out)


# A model with the compression-history stream (runtime.dct) declares it in its ONNX metadata as
# "F,C" (frequencies, clip) and takes two more inputs beside the image: EXTRA_INPUTS.
DCT_KEY = "defaker.dct"
# how a model takes the stream (metadata DCT_LAYOUT_KEY; unset: DCT_NCHW, the PyTorch export's):
# float32 [N, F, T/8, T/8], or uint8 [N, T/8, T/8, F] (export.stream_layout: what packages ship)
DCT_LAYOUT_KEY = "defaker.dct_layout"
DCT_NCHW = "nchw-f32"
DCT_NHWC = "nhwc-u8"
DCT_LAYOUTS = (DCT_NCHW, DCT_NHWC)
EXTRA_INPUTS = ("dct", "qtable")


def parse_dct(value: str | None) -> tuple[int, int] | None:
    """(frequencies, clip) from a DCT_KEY metadata value; None for a model without the stream."""
    if not value:
        return None
    try:
        f, c = (int(v) for v in str(value).split(","))
    except ValueError:
        raise ValueError(f"bad {DCT_KEY} metadata {value!r} (expected 'frequencies,clip')") from None
    if not (1 <= f <= 63 and 1 <= c <= 127):
        raise ValueError(f"bad {DCT_KEY} metadata {value!r}: frequencies 1..63, clip 1..127")
    return f, c


def model_dct(model) -> tuple[int, int] | None:
    """The DCT stream an ONNX ModelProto declares (duck-typed: no onnx import here)."""
    return parse_dct(_meta(model, DCT_KEY))


def check_layout(layout: str | None) -> str:
    """`layout`, or DCT_NCHW for None/""; ValueError for a stream layout this runtime does not know."""
    return _known(layout, DCT_NCHW, DCT_LAYOUTS, "DCT stream layout")


def model_layout(model) -> str:
    """The stream layout an ONNX ModelProto declares in its metadata."""
    return check_layout(_meta(model, DCT_LAYOUT_KEY))


def dct_shape(n: int, tile: int, dct: tuple[int, int], layout: str = DCT_NCHW) -> tuple[int, int, int, int]:
    """The dct input's shape for `n` tiles in `layout`."""
    t = tile // 8
    return (n, t, t, dct[0]) if check_layout(layout) == DCT_NHWC else (n, dct[0], t, t)


def dct_dtype(layout: str) -> type:
    """The dct input's element type in `layout`: uint8 channels-last (its values are integers 0..clip),
    float32 channels-first."""
    return np.uint8 if check_layout(layout) == DCT_NHWC else np.float32


def _stream_of(tiles: np.ndarray, q: np.ndarray, dct: tuple[int, int], layout: str) -> np.ndarray:
    """dct_stream of tiles in `layout` (NHWC: uint8, the values are integers 0..clip)."""
    from .dct import dct_stream

    s = dct_stream(tiles, q, *dct)
    return s.transpose(0, 2, 3, 1).astype(np.uint8) if layout == DCT_NHWC else s


def extra_inputs(tiles: np.ndarray, tables: np.ndarray | None, dct: tuple[int, int] | None,
                 fmt: str | None = None, layout: str = DCT_NCHW) -> dict[str, np.ndarray]:
    """The inputs beside the image for uint8 tiles [N, T, T, 3] and their files' luma tables [N, 64]
    (None: no table, e.g. an array handed to the API): {} for a model without the stream; only
    the table for a PIXELS model (it computes the stream itself). `layout`: the model's (model_layout)."""
    if dct is None:
        return {}
    from .dct import NO_TABLE

    n = len(tiles)
    q = np.broadcast_to(NO_TABLE, (n, 64)) if tables is None else np.asarray(tables, np.float32).reshape(n, 64)
    if fmt == PIXELS:
        return {"qtable": np.ascontiguousarray(q, dtype=np.float32)}
    return {"dct": np.ascontiguousarray(_stream_of(tiles, q, dct, check_layout(layout))),
            "qtable": np.ascontiguousarray(q, dtype=np.float32)}


def extra_names(fmt: str, dct: tuple[int, int] | None) -> tuple[str, ...]:
    """The names of the inputs a model of `fmt` (with the stream `dct`, or None) takes beside the image."""
    if dct is None:
        return ()
    return ("qtable",) if fmt == PIXELS else EXTRA_INPUTS


def fill_extra(out: dict[str, np.ndarray], tiles: np.ndarray, tables: np.ndarray | None,
               dct: tuple[int, int] | None, origins: list[tuple[int, int]] | None = None,
               stream: np.ndarray | None = None) -> None:
    """extra_inputs written into `out` (extra_buffers' arrays, one row per tile, in their layout:
    uint8 channels-last or float32 channels-first), reading each tile's coefficients from `stream`
    (dct.image_stream of the whole image; `origins` the tiles' (y, x)) where the tile is a slice of
    it, and transforming only the others (off the grid, or past the image's whole blocks). The same
    values as extra_inputs: a slice sees the same 8x8 blocks."""
    if dct is None:
        return
    from .dct import NO_TABLE, stream_tile

    n, tile = len(tiles), tiles.shape[1]
    q = np.broadcast_to(NO_TABLE, (n, 64)) if tables is None else np.asarray(tables, np.float32).reshape(n, 64)
    out["qtable"][:n] = q
    if "dct" not in out:  # a PIXELS model: the stream is computed in its graph
        return
    d = out["dct"]
    layout = DCT_NHWC if d.dtype == np.uint8 else DCT_NCHW
    rest = list(range(n))
    if stream is not None and origins is not None:
        rest = []
        for k, (y, x) in enumerate(origins):
            s = stream_tile(stream, y, x, tile)
            if s is None:
                rest.append(k)
            else:
                d[k] = s if layout == DCT_NHWC else s.transpose(2, 0, 1)
    if rest:
        d[rest] = _stream_of(tiles[rest], q[rest], dct, layout)


def extra_buffers(n: int, tile: int, dct: tuple[int, int] | None, fmt: str | None = None,
                  layout: str = DCT_NCHW) -> dict[str, np.ndarray]:
    """Empty batch buffers for `extra_inputs` of `n` tiles ({} for a model without the stream, only
    the table for a PIXELS model), the stream in `layout`."""
    if dct is None:
        return {}
    if fmt == PIXELS:
        return {"qtable": np.empty((n, 64), np.float32)}
    return {"dct": np.empty(dct_shape(n, tile, dct, layout), dct_dtype(layout)),
            "qtable": np.empty((n, 64), np.float32)}


def aggregate_logits(tile_logits: np.ndarray) -> float:
    """One image logit from its tiles' logits: the maximum.

    Why max: a splice or an edit usually sits in one tile, and averaging would dilute it in a large
    image; a fully generated image lights up every tile, so max loses nothing there. The decision
    threshold is calibrated on this same aggregate, so larger images are not judged by a rule
    fitted to smaller ones only.
    """
    t = np.asarray(tile_logits, dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise ValueError("no tiles")
    return float(t.max())


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """[T, T] weights that ramp linearly over the overlap so stitched seams do not show."""
    ramp = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        ramp[:overlap] = r
        ramp[-overlap:] = r[::-1]
    return np.outer(ramp, ramp)
