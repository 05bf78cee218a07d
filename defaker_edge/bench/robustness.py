"""Robustness to the post-processing images meet in the wild (DESIGN §8, IMDLBenCo's settings).

JPEG re-compression at quality 50-100, Gaussian blur with kernel 3-23 (sigma from the kernel size,
OpenCV's rule), additive Gaussian noise with sigma 3-23 (in 0..255 units), and resize by x0.5-1.5
(bilinear for the image; the ground-truth mask with nearest so it stays binary). The image is
perturbed *before* the runtime sees it, exactly as a user's file would be.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

from .accuracy import Perturb, evaluate, headline

DEFAULT_LEVELS: dict[str, list[float]] = {
    "jpeg": [100, 90, 70, 50],
    "blur": [3, 7, 15, 23],
    "noise": [3, 7, 15, 23],
    "resize": [0.5, 0.75, 1.25, 1.5],
}
RANGES = {"jpeg": (1, 100), "blur": (1, 99), "noise": (0, 255), "resize": (0.05, 8.0)}


def _cv2():
    try:
        import cv2
    except ImportError:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("opencv-python-headless", "robustness perturbations",
                                     "pip install 'defaker-edge[build]'") from None
    return cv2


def make_perturb(kind: str, level: float, seed: int = 0) -> Perturb:
    """A function (image, mask) -> (image, mask) applying one perturbation at one level."""
    if kind == "jpeg":
        from PIL import Image

        q = int(level)

        def jpeg(img, gt):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=q)
            return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), gt
        return jpeg
    if kind == "blur":
        k = int(level)
        if k % 2 == 0:
            raise ValueError(f"blur kernel {k} must be odd")

        def blur(img, gt):
            return _cv2().GaussianBlur(img, (k, k), 0), gt
        return blur
    if kind == "noise":
        rng = np.random.default_rng(seed)  # one stream over the dataset, in its fixed order

        def noise(img, gt):
            n = rng.normal(0.0, float(level), img.shape)
            return np.clip(np.rint(img.astype(np.float64) + n), 0, 255).astype(np.uint8), gt
        return noise
    if kind == "resize":
        f = float(level)

        def resize(img, gt):
            cv2 = _cv2()
            h, w = img.shape[:2]
            size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
            out = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if f >= 1 else cv2.INTER_AREA)
            if gt is not None:
                gt = cv2.resize(gt.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            return out, gt
        return resize
    raise ValueError(f"unknown perturbation {kind!r}: use one of {', '.join(DEFAULT_LEVELS)}")


def parse_levels(text: str | None) -> dict[str, list[float]]:
    """'jpeg=90,50;blur=3,23' -> {'jpeg': [90, 50], 'blur': [3, 23]}; None -> the defaults."""
    if not text:
        return {k: list(v) for k, v in DEFAULT_LEVELS.items()}
    out: dict[str, list[float]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        kind, _, vals = part.partition("=")
        kind = kind.strip()
        if kind not in DEFAULT_LEVELS or not vals:
            raise ValueError(f"bad robustness level spec {part!r}: use e.g. 'jpeg=90,50;blur=3,23'")
        levels = [float(v) for v in vals.split(",") if v.strip()]
        lo, hi = RANGES[kind]
        bad = [v for v in levels if not lo <= v <= hi]
        if bad:
            raise ValueError(f"{kind} levels {bad} outside [{lo}, {hi}]")
        out[kind] = levels
    return out


def run_robustness(predictor, samples, threshold: float, levels: dict[str, list[float]], *,
                   variant: str, backend: str, seed: int = 0,
                   on_level: Callable[[str, float], None] | None = None) -> list[dict]:
    rows = []
    for kind, vals in levels.items():
        for lv in vals:
            if on_level:
                on_level(kind, lv)
            res = evaluate(predictor, samples, threshold, perturb=make_perturb(kind, lv, seed),
                           desc=f"{variant} {kind}={lv:g}")
            rows.append({"variant": variant, "backend": backend, "perturbation": kind, "level": lv,
                         **headline(res.summary)})
    return rows
