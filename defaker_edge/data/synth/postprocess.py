"""Global processing applied alike to authentic and manipulated images.

Why: a detector must not learn "processed means fake". So every image, whatever its label, goes
through the same random benign chain *before* any manipulation (recompression, resize, mild
colour, sharpening), and the same final chain after it (optional noise, then JPEG at quality
60-100 or PNG). The only systematic difference left between labels is the local manipulation.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

_BANK_LEN = 1 << 23  # 8M float32 = 32 MiB per process; slices up to half of it (1024x1365x3)


@lru_cache(maxsize=1)
def _bank() -> np.ndarray:
    # Generated once per process from a fixed seed, so output stays a pure function of (seed, index).
    return np.random.default_rng(0x5EED).standard_normal(_BANK_LEN, dtype=np.float32)


def gaussian(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal float32 noise of `shape`.

    Why a bank: drawing millions of normals per image was the single largest cost of synthesis.
    A random slice of a fixed bank (random start, random sign) is as good for sensor-like noise.
    """
    n = int(np.prod(shape))
    if n > _BANK_LEN // 2:
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.integers(0, _BANK_LEN - n))
    out = _bank()[start:start + n].reshape(shape)
    return -out if rng.random() < 0.5 else out


def jpeg(img: np.ndarray, q: int, subsampling_444: bool = False) -> np.ndarray:
    """Round-trip through JPEG at quality q (RGB in, RGB out)."""
    return cv2.cvtColor(cv2.imdecode(encode_jpeg(img, q, subsampling_444), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def encode_jpeg(img: np.ndarray, q: int, subsampling_444: bool = False) -> np.ndarray:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(q)]
    if subsampling_444:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:  # pragma: no cover - OpenCV only fails here on invalid arrays
        raise RuntimeError("JPEG encoding failed")
    return buf


def encode_png(img: np.ndarray, level: int = 1) -> np.ndarray:
    # zlib level 1 with the SUB filter: ~2x faster than OpenCV's defaults for ~5% more bytes
    arr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, int(level),
                                         cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf


def resize(img: np.ndarray, h: int, w: int, rng: np.random.Generator | None = None) -> np.ndarray:
    if (h, w) == img.shape[:2]:
        return img
    if h * w < img.shape[0] * img.shape[1]:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    if rng is not None and rng.random() < 0.5:
        interp = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)[int(rng.integers(3))]
    return cv2.resize(img, (int(w), int(h)), interpolation=interp)


def colour_jitter(rng: np.random.Generator, img: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Mild global gamma / per-channel gain / saturation change, through a lookup table per channel."""
    gamma = float(np.exp(rng.normal(0, 0.08 * strength)))
    gains = 1.0 + rng.normal(0, 0.04 * strength, 3)
    x = np.arange(256, dtype=np.float32) / 255.0
    out = np.empty_like(img)
    for c in range(3):
        lut = np.clip(np.rint(255.0 * np.power(x, gamma) * gains[c]), 0, 255).astype(np.uint8)
        out[..., c] = cv2.LUT(img[..., c], lut)
    sat = float(1.0 + rng.normal(0, 0.08 * strength))
    if abs(sat - 1.0) > 0.02:
        grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, sat, grey, 1.0 - sat, 0.0)
    return out


def sharpen(img: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    blur = cv2.GaussianBlur(img, (0, 0), sigma)
    return cv2.addWeighted(img, 1.0 + amount, blur, -amount, 0)


def add_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    # addWeighted rounds and saturates to uint8 in one pass
    return cv2.addWeighted(img.astype(np.float32), 1.0, gaussian(rng, img.shape), float(sigma), 0.0,
                           dtype=cv2.CV_8U)


def benign(rng: np.random.Generator, img: np.ndarray, p: float, size_min: int, size_max: int,
           allow_resize: bool = True) -> tuple[np.ndarray, list[str]]:
    """Random benign global chain (each op with probability p). Returns the image and op names.

    The resize keeps both sides inside [size_min, size_max] so the configured size range holds;
    allow_resize=False for content whose geometry is still needed (document text boxes, face landmarks).
    """
    ops: list[str] = []
    if rng.random() < p and allow_resize:
        h, w = img.shape[:2]
        lo = max(0.7, size_min / min(h, w))
        hi = min(1.3, size_max / max(h, w))
        if hi > lo + 0.02:
            f = rng.uniform(lo, hi)
            nh, nw = max(size_min, min(size_max, round(h * f))), max(size_min, min(size_max, round(w * f)))
            img = resize(img, nh, nw, rng)
            ops.append(f"resize{f:.2f}")
    if rng.random() < p:
        img = colour_jitter(rng, img)
        ops.append("colour")
    if rng.random() < p * 0.5:
        img = sharpen(img, float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.7, 1.5)))
        ops.append("sharpen")
    if rng.random() < p:
        q = int(rng.integers(70, 97))
        img = jpeg(img, q)
        ops.append(f"jpeg{q}")
    return img, ops


def finalize(rng: np.random.Generator, img: np.ndarray, jpeg_prob: float, noise_prob: float
             ) -> tuple[bytes, str, str]:
    """Last global step: optional noise, then JPEG (60-100) or PNG. Returns (bytes, ext, description)."""
    desc = []
    if rng.random() < noise_prob:
        s = float(rng.uniform(0.5, 3.0))
        img = add_noise(rng, img, s)
        desc.append(f"noise{s:.1f}")
    if rng.random() < jpeg_prob:
        q = int(rng.integers(60, 101))
        s444 = bool(rng.random() < 0.3)
        buf = encode_jpeg(img, q, s444)
        desc.append(f"jpeg{q}" + ("-444" if s444 else ""))
        return buf.tobytes(), ".jpg", "+".join(desc)
    desc.append("png")
    return encode_png(img).tobytes(), ".png", "+".join(desc)
