"""Safe image decoding: any input a user brings becomes RGB uint8 [H, W, 3] or a typed ImageError.

Mode conversions (each a choice, documented because forensic traces live in the pixel values):
- RGB: kept as is. 16-bit RGB is reduced to 8 bits by >> 8 (Pillow already does this).
- L (grey), 1 (bilevel): the one channel is copied into R, G and B; nothing is invented.
- LA, RGBA, RGBa, PA: the alpha channel is dropped and the stored colour values are kept.
  Compositing over a background would replace the stored pixels with made-up ones.
- P (palette): expanded through its palette (with transparency, as RGBA, then alpha dropped).
- CMYK: Pillow's naive conversion (ICC profiles are ignored; an on-device camera never makes CMYK).
- I;16 / I;16B / I (16 or 32-bit integer grey): values 0..65535 are mapped to 0..255 by /257
  (rounded); larger values are clipped. Then replicated as for L.
- F (float grey): values in [0, 1] are scaled by 255, anything else is clipped to [0, 255].
- YCbCr, LAB, HSV: Pillow's conversion to RGB.
EXIF orientation is applied (a phone photo is checked the way it is shown). Only the first frame
of a multi-frame file (GIF, TIFF, MPO) is used. Formats are limited to an allow-list so that a
hostile file never reaches a risky decoder (EPS, for example, runs Ghostscript).

Bounded work per image (hostile files): a file is read header first (junk is refused before the
rest is read); a JPEG's markers are walked before decoding (more than MAX_JPEG_SCANS scans, or
fewer bytes than its claimed pixels need, is refused, and so is padding: a run of zero bytes in a
scan longer than _padding_bound, or more than MAX_JUNK bytes after the end-of-image marker that
are not an appended JPEG, MP4 or Samsung trailer); a PNG's data must be able to hold its
claimed pixels; and decoding checks a wall-clock deadline (`decode_timeout` seconds per 10 MP)
each time Pillow's incremental decoder asks for more data (at most READ_CHUNK bytes), so a file
that is slow to decode stops within about the limit instead of holding a core for minutes.
Any OSError while reading is an ImageError naming the file.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import time
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger gets a clear error, not a decompression bomb
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of encoded data
# Seconds of decoding allowed per 10 MP (at least this much for any image). A 2-core EPYC decodes
# 10 MP of ordinary JPEG in well under a second; a hostile progressive file needs minutes.
DEFAULT_DECODE_TIMEOUT = 5.0
# Progressive JPEGs from real encoders have ~10 scans (mozjpeg's optimized scripts stay under 70);
# each scan costs a pass over the whole image, so 20,000 empty scans take minutes.
MAX_JPEG_SCANS = 100
HEAD_BYTES = 1 << 20  # read this much of a file first: the header checks need no more
MAX_JUNK = 1 << 16  # bytes of garbage tolerated between JPEG markers (libjpeg skips it with a warning)
READ_CHUNK = 1 << 14  # the decoder's input per step, so the deadline is checked often (4 KB steps cost
# ~0.4 ms more per 1024² JPEG than 16 KB in read calls; 16 KB of entropy data decodes in about a ms)
_WANTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")
Image.init()  # register every plugin so the allow-list below can be checked against what is there
ALLOWED_FORMATS = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]


def _name_of(src: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, np.ndarray):
        return "<array>"
    return "<bytes>"


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("L", "1"):
        g = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in ("LA", "La"):
        g = np.asarray(img, dtype=np.uint8)[:, :, 0]
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3])
    if mode in ("P", "PA"):
        rgba = img.convert("RGBA")
        return np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8)[:, :, :3])
    if mode.startswith("I"):
        a = np.asarray(img).astype(np.float64)
        a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8) if a.max(initial=0) > 255 else np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _array_to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    a = arr
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(name, f"array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if a.dtype == np.uint8:
        pass
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageError(name, "array holds NaN or Inf")
        # floats are taken as [0, 1] (the usual convention of imaging libraries)
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    else:
        raise ImageError(name, f"unsupported array dtype {a.dtype} (use uint8, uint16, bool or float in [0,1])")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


class _DecodeTimeout(Exception):
    pass


class _DeadlineReader(io.BytesIO):
    """BytesIO whose reads stop at a wall-clock deadline. Pillow's decoders pull their input
    through read() a chunk (the image's decodermaxblock, set to READ_CHUNK) at a time, so this
    bounds the time between two checks by the work one chunk of compressed data can cause."""

    deadline: float | None = None

    def read(self, n: int | None = -1) -> bytes:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _DecodeTimeout()
        return super().read(n)


_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # inside entropy data: 00 is stuffing, D0-D7 restarts
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_check(data: bytes, name: str, complete: bool, max_pixels: int = 0) -> tuple[int, int] | None:
    """Walk a JPEG's markers without decoding. Refuses junk where a marker belongs, more than
    MAX_JPEG_SCANS scans, and (when `complete`) a file with fewer bytes than the pixels its SOF
    claims could be coded in (unless over max_pixels: that has its own, clearer error). Returns the SOF's (width, height), or None if none was reached."""
    n, pos, scans, size, huffman = len(data), 2, 0, None, True
    zeros = b"\0" * (MAX_JUNK + 1)  # a longer run of zero bytes is padding (see _padding_bound)
    end = None  # the offset just past the first image's EOI
    while pos < n:
        ff = data.find(b"\xff", pos)
        if ff < 0 or ff - pos > MAX_JUNK:
            if ff < 0 and n - pos <= MAX_JUNK:
                break
            raise ImageError(name, f"not a valid JPEG: no marker in {min(n, ff if ff >= 0 else n) - pos} bytes "
                                   f"at offset {pos}")
        pos = ff + 1
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        m = data[pos]
        pos += 1
        if m == 0xD9:  # EOI
            end = pos
            break
        if m == 0x01 or 0xD0 <= m <= 0xD7 or m == 0x00:
            continue
        if pos + 2 > n:
            break
        seg = struct.unpack(">H", data[pos:pos + 2])[0]
        if m in _SOF and pos + 8 <= n:
            h, w = struct.unpack(">HH", data[pos + 3:pos + 7])
            size, huffman = (w, h), m < 0xC8
            zeros = b"\0" * (_padding_bound(w, h, data[pos + 7]) + 1)
        pos += seg
        if m == 0xDA:  # SOS: entropy-coded data runs to the next real marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(name, f"JPEG with more than {MAX_JPEG_SCANS} scans refused (each one is a "
                                       "pass over the whole image; real encoders write about 10)")
            mm = _JPEG_NEXT_MARKER.search(data, pos)
            stop = mm.start() if mm else n
            if data.find(zeros, pos, stop) >= 0:
                raise ImageError(name, f"JPEG scan holds a run of more than {len(zeros) - 1} zero bytes: refused "
                                       "as padding (an image's coded data never needs it)")
            pos = stop
    if complete and end is not None and n - end > MAX_JUNK and not _known_trailer(data, end):
        raise ImageError(name, f"{n - end} bytes after the JPEG's end-of-image marker: refused as junk "
                               f"(at most {MAX_JUNK} are allowed, unless they are an appended JPEG or MP4)")
    if complete and end is not None and data.find(zeros, end) >= 0:
        raise ImageError(name, f"a run of more than {len(zeros) - 1} zero bytes after the JPEG's end-of-image "
                               "marker: refused as padding")
    if complete and size is not None and huffman and size[0] * size[1] <= max_pixels:
        # Huffman coding spends at least one bit on each 8x8 block's DC coefficient
        need = -(-size[0] // 8) * -(-size[1] // 8) // 8
        if n < need:
            raise ImageError(name, f"truncated: {n} bytes cannot hold the {size[0]}x{size[1]} pixels the JPEG "
                                   f"header claims (at least {need} bytes)")
    return size


def _padding_bound(w: int, h: int, components: int) -> int:
    """The longest run of zero bytes a JPEG scan may hold: 64 KB, or one byte per 8x8 block of
    every component if that is more. Zero bits are real data only where blocks code as all-zero
    codes (a flat area with optimized tables: 2-4 bits a block, a quarter to half a byte), so a
    longer run is padding the decoder never needs."""
    return max(MAX_JUNK, -(-w // 8) * -(-h // 8) * max(1, components))


def _known_trailer(data: bytes, end: int) -> bool:
    """Data after a JPEG's EOI that cameras write on purpose: another JPEG (MPO frames, an Ultra
    HDR gain map), an MP4 (a motion photo: ISO BMFF, 'ftyp' at offset 4), or a Samsung trailer
    (ends with 'SEFT')."""
    return data[end:end + 3] == b"\xff\xd8\xff" or data[end + 4:end + 8] == b"ftyp" or data[-4:] == b"SEFT"


def _png_check(data: bytes, name: str, max_pixels: int) -> None:
    """A PNG's pixel data is deflated at most ~1032:1: fewer bytes than that are truncated."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype, 1)
    raw = h * (1 + -(-w * depth * channels // 8))
    if w * h <= max_pixels and len(data) < raw // 1032:
        raise ImageError(name, f"truncated: {len(data)} bytes cannot hold the {w}x{h} pixels the PNG header claims")


def _known_signature(head: bytes, name: str) -> None:
    """Refuse from the first bytes what no allowed decoder would accept (a 400 MB non-image
    costs one small read, not a full one)."""
    for fmt in ALLOWED_FORMATS:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is None or accept(head[:16]):
                return
        except Exception:  # an accept() that chokes on odd bytes: let the real open decide
            return
    raise ImageError(name, "not a supported image (JPEG, PNG, WebP, TIFF, BMP, GIF, PPM)")


def _read(path: Path, name: str, max_bytes: int) -> bytes:
    """The file's bytes, header first: a JPEG that is junk past its first megabyte is refused
    before the rest is read. Any OSError (permissions, I/O error, a vanished file) is an ImageError."""
    try:
        if not path.exists():
            raise ImageError(name, "file not found")
        if not path.is_file():
            raise ImageError(name, "not a regular file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageError(name, "empty file (0 bytes)")
            if size > max_bytes:
                raise ImageError(name, f"file is {size} bytes, over the {max_bytes}-byte limit")
            head = f.read(HEAD_BYTES)
            _known_signature(head, name)
            if head[:3] == b"\xff\xd8\xff":
                wh = _jpeg_check(head, name, complete=False)
                # a JPEG needs nowhere near 32 bytes a pixel: a larger file is padding or junk
                if wh is not None and size > (16 << 20) + 32 * wh[0] * wh[1]:
                    raise ImageError(name, f"file is {size} bytes for a {wh[0]}x{wh[1]} JPEG: "
                                           "refused as padding/junk")
            if len(head) < size:
                del head
                f.seek(0)
                return f.read(max_bytes + 1)  # one buffer (head + rest would briefly need two)
            return head
    except OSError as e:
        raise ImageError(name, f"cannot read the file ({type(e).__name__}: {e.strerror or e})") from None


def _open(src: ImageSource, name: str, max_bytes: int, max_pixels: int) -> tuple[Image.Image, _DeadlineReader]:
    if isinstance(src, (str, os.PathLike)):
        data = _read(Path(src), name, max_bytes)
    else:
        data = bytes(src)
        if len(data) == 0:
            raise ImageError(name, "empty input (0 bytes)")
        if len(data) > max_bytes:
            raise ImageError(name, f"input is {len(data)} bytes, over the {max_bytes}-byte limit")
        _known_signature(data, name)
    if data[:3] == b"\xff\xd8\xff":
        _jpeg_check(data, name, complete=True, max_pixels=max_pixels)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        _png_check(data, name, max_pixels)
    fp = _DeadlineReader(data)
    del data  # the reader holds the only copy: a failure below releases it with the reader
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd metadata warns; real failures raise below
            return Image.open(fp, formats=ALLOWED_FORMATS), fp
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"refused as a decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(name, "not a supported image (JPEG, PNG, WebP, TIFF, BMP, GIF, PPM)") from None
    except Exception as e:  # hostile headers raise all kinds of things inside decoders
        raise ImageError(name, f"unreadable image header ({type(e).__name__}: {e})") from None


def decode_limit_s(pixels: int, decode_timeout: float) -> float:
    """Seconds a decode of `pixels` may take: decode_timeout per 10 MP, never less than decode_timeout."""
    return decode_timeout * max(1.0, pixels / 1e7)


def clean_error(e: BaseException) -> BaseException:
    """Drop what an error keeps alive: its traceback's frames hold the failed input's bytes, and a
    caller that keeps the error (a batch yielding it later) would keep them too."""
    e.__traceback__ = None
    e.__context__ = None
    e.__cause__ = None
    return e


def load_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES, name: str | None = None,
               decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT) -> np.ndarray:
    """Decode a path, encoded bytes or an array into RGB uint8 [H, W, 3].

    Raises ImageError (naming the file) for anything that is not a readable image within limits.
    decode_timeout: seconds of decoding allowed per 10 MP (see decode_limit_s); None = no limit.
    """
    label = _name_of(src, name)
    try:
        return _load(src, label, max_pixels, max_bytes, decode_timeout)
    except ImageError as e:
        raise clean_error(e)  # without the frames that hold the input's bytes


def load_dataset_image(src: str | os.PathLike, *, name: str | None = None) -> np.ndarray:
    """load_image for the project's own dataset files (training, calibration, evaluation, the bench):
    the same checks, but no wall-clock decode deadline. The deadline protects a device from a hostile
    upload; in a batch job it only misfires when the machine is loaded or the process is paused, and
    it once ended a two-hour training session at one ordinary training JPEG while the process was
    stopped for a latency measurement."""
    return load_image(src, name=name, decode_timeout=None)


def _load(src: ImageSource, label: str, max_pixels: int, max_bytes: int, decode_timeout: float | None) -> np.ndarray:
    t0 = time.monotonic()
    if isinstance(src, np.ndarray):
        out = _array_to_rgb(src, label)
        if out.shape[0] * out.shape[1] > max_pixels:
            raise ImageError(label, f"{out.shape[1]}x{out.shape[0]} is over the {max_pixels}-pixel limit")
        return out
    img, fp = _open(src, label, max_bytes, max_pixels)
    limit = None
    try:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError(label, f"invalid size {w}x{h}")
        if w * h > max_pixels:
            raise ImageError(label, f"{w}x{h} = {w * h / 1e6:.1f} MP is over the {max_pixels / 1e6:.0f} MP limit "
                                    "(raise it with --max-pixels if you trust the file)")
        if decode_timeout:
            limit = decode_limit_s(w * h, decode_timeout)
            fp.deadline = t0 + limit
            img.decodermaxblock = READ_CHUNK  # check the deadline every few KB of compressed data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF/ICC chunks; we report real failures
            img.load()
            fp.deadline = None
            try:
                # in place: without an orientation tag the default returns a copy of every image
                ImageOps.exif_transpose(img, in_place=True)
            except Exception as e:  # a broken EXIF block must not lose the image
                log.warning("%s: EXIF orientation ignored (%s)", label, e)
            if img.size[0] * img.size[1] > max_pixels:
                raise ImageError(label, "over the pixel limit after EXIF rotation")
            out = _to_rgb(img)
    except ImageError:
        raise
    except _DecodeTimeout:
        raise ImageError(label, f"decoding took longer than {limit:g} s (--decode-timeout, "
                                f"{decode_timeout:g} s per 10 MP): refused") from None
    except Image.DecompressionBombError as e:
        raise ImageError(label, f"refused as a decompression bomb ({e})") from None
    except MemoryError:
        raise ImageError(label, "not enough memory to decode") from None
    except Exception as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise ImageError(label, "truncated image data") from None
        raise ImageError(label, f"corrupt image data ({type(e).__name__}: {msg})") from None
    finally:
        img.close()
        fp.close()
    if out.ndim != 3 or out.shape[2] != 3 or out.size == 0:
        raise ImageError(label, f"decoded to an unusable shape {out.shape}")
    return out


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None, *,
              name: str | None = None) -> tuple[np.ndarray, bool]:
    """Read a mask as bool [H, W] (True = manipulated).

    Returns (mask, was_binary). A non-binary mask is thresholded at 50% of its range (> 127 for
    8-bit), and was_binary is False so the caller can warn. `size` is (H, W) to check against.
    """
    label = name or str(path)
    rgb = load_dataset_image(path, name=label)  # masks are dataset files
    g = rgb.max(axis=2)
    values = np.unique(g)
    was_binary = bool(np.all(np.isin(values, (0, 255))) or np.all(np.isin(values, (0, 1))))
    if was_binary and values.max(initial=0) == 1:
        m = g > 0
    else:
        m = g > 127
    if size is not None and m.shape != tuple(size):
        raise ImageError(label, f"mask is {m.shape[1]}x{m.shape[0]} but its image is {size[1]}x{size[0]}")
    return m, was_binary


def save_mask_png(path: str | os.PathLike, prob: np.ndarray) -> None:
    """Save a probability map in [0, 1] (or a bool mask) as an 8-bit grey PNG (0..255)."""
    p = np.asarray(prob)
    if p.dtype == np.bool_:
        u8 = p.astype(np.uint8) * 255
    elif p.dtype == np.uint8:
        u8 = p
    else:
        u8 = np.clip(np.rint(np.nan_to_num(p.astype(np.float64), nan=0.0) * 255.0), 0, 255).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(u8, mode="L").save(path, format="PNG")
