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
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger gets a clear error, not a decompression bomb
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of encoded data
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


def _open(src: ImageSource, name: str, max_bytes: int) -> Image.Image:
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.exists():
            raise ImageError(name, "file not found")
        if not p.is_file():
            raise ImageError(name, "not a regular file")
        size = p.stat().st_size
        if size == 0:
            raise ImageError(name, "empty file (0 bytes)")
        if size > max_bytes:
            raise ImageError(name, f"file is {size} bytes, over the {max_bytes}-byte limit")
        data = p.read_bytes()
    else:
        data = bytes(src)
        if len(data) == 0:
            raise ImageError(name, "empty input (0 bytes)")
        if len(data) > max_bytes:
            raise ImageError(name, f"input is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd metadata warns; real failures raise below
            return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"refused as a decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(name, "not a supported image (JPEG, PNG, WebP, TIFF, BMP, GIF, PPM)") from None
    except Exception as e:  # hostile headers raise all kinds of things inside decoders
        raise ImageError(name, f"unreadable image header ({type(e).__name__}: {e})") from None


def load_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES, name: str | None = None) -> np.ndarray:
    """Decode a path, encoded bytes or an array into RGB uint8 [H, W, 3].

    Raises ImageError (naming the file) for anything that is not a readable image within limits.
    """
    label = _name_of(src, name)
    if isinstance(src, np.ndarray):
        out = _array_to_rgb(src, label)
        if out.shape[0] * out.shape[1] > max_pixels:
            raise ImageError(label, f"{out.shape[1]}x{out.shape[0]} is over the {max_pixels}-pixel limit")
        return out
    img = _open(src, label, max_bytes)
    try:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError(label, f"invalid size {w}x{h}")
        if w * h > max_pixels:
            raise ImageError(label, f"{w}x{h} = {w * h / 1e6:.1f} MP is over the {max_pixels / 1e6:.0f} MP limit "
                                    "(raise it with --max-pixels if you trust the file)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF/ICC chunks; we report real failures
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception as e:  # a broken EXIF block must not lose the image
                log.warning("%s: EXIF orientation ignored (%s)", label, e)
            if img.size[0] * img.size[1] > max_pixels:
                raise ImageError(label, "over the pixel limit after EXIF rotation")
            out = _to_rgb(img)
    except ImageError:
        raise
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
    rgb = load_image(path, name=label)
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
