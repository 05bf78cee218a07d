"""Encoding and decoding for the held-out set: every save goes through real codecs (Pillow's libjpeg,
libwebp, zlib), never a simulated quantizer, so the files carry real compression history."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(img: np.ndarray, fmt: str, quality: int | None = None, subsampling: int | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(img)
    if fmt == "JPEG":
        kw = {"quality": int(quality)}
        if subsampling is not None:
            kw["subsampling"] = subsampling  # 0 = 4:4:4, 2 = 4:2:0 (libjpeg's default)
        im.save(buf, "JPEG", **kw)
    elif fmt == "WEBP":
        im.save(buf, "WEBP", quality=int(quality), method=2)
    elif fmt == "PNG":
        im.save(buf, "PNG", compress_level=3)
    else:
        raise ValueError(f"unknown format {fmt}")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def roundtrip(img: np.ndarray, fmt: str, quality: int | None = None, subsampling: int | None = None) -> np.ndarray:
    return decode(encode(img, fmt, quality, subsampling))


EXT = {"JPEG": ".jpg", "WEBP": ".webp", "PNG": ".png"}


def final_saves(rng: np.random.Generator, n_saves: int) -> list[dict]:
    """A chain of saves; the last decides the file's format. Qualities reach 55 and 99 on purpose
    (outside the usual 60-98 training range); WebP and PNG appear as final formats only."""
    saves = [{"format": "JPEG", "quality": int(rng.integers(55, 100)),
              "subsampling": int(rng.choice([0, 2]))} for _ in range(n_saves - 1)]
    u = rng.random()
    if u < 0.66:
        saves.append({"format": "JPEG", "quality": int(rng.integers(55, 100)), "subsampling": int(rng.choice([0, 2]))})
    elif u < 0.83:
        saves.append({"format": "WEBP", "quality": int(rng.integers(55, 96))})
    else:
        saves.append({"format": "PNG"})
    return saves


def apply_saves(img: np.ndarray, saves: list[dict]) -> tuple[bytes, str]:
    """Run the chain; return the last file's bytes and its extension."""
    data = b""
    for i, s in enumerate(saves):
        data = encode(img, s["format"], s.get("quality"), s.get("subsampling"))
        if i + 1 < len(saves):
            img = decode(data)
    return data, EXT[saves[-1]["format"]]
