"""Local manipulations of natural images.

Each op is `op(rng, img, src_name) -> (before, after, info)`: `before` is the image the forger
started from (usually `img`; double-JPEG first compresses it the way a camera would), `after`
the forgery. The ground-truth mask is `regions.changed(before, after)`, exact to the pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import regions as R
from .postprocess import add_noise, jpeg, sharpen
from .scenes import natural_source


def paste_donor(rng, img, donor, info: dict, area: tuple[float, float], p_jpeg: float, recompress=jpeg):
    """The splice itself, shared by the synthetic and the real-photo generators: maybe re-save the
    donor (`recompress(donor, q)`, q 50-95, with probability p_jpeg), pick a region, maybe match its
    colour to the host's, feather the edge, composite. `info` gains what was done."""
    h, w = img.shape[:2]
    if rng.random() < p_jpeg:
        q = int(rng.integers(50, 96))
        donor = recompress(donor, q)
        info["donor_jpeg"] = q
    m, shape = R.random_region(rng, h, w, area=area)
    if rng.random() < 0.5:
        donor = R.match_colour(donor, img, m)
        info["colour_matched"] = True
    alpha, sigma = R.feather(rng, m)
    return R.composite(img, donor, alpha), shape, round(sigma, 2)


def splice(rng, img, src_name):
    """Paste a region of another photo/scene (maybe colour-matched, maybe with its own JPEG history)."""
    h, w = img.shape[:2]
    donor, dname = natural_source(rng, h, w, exclude=src_name.split(":", 1)[-1])
    info = {"donor": dname}
    after, shape, sigma = paste_donor(rng, img, donor, info, (0.02, 0.2), 0.5)
    info.update(shape=shape, feather=sigma)
    return img, after, info


def copy_move(rng, img, src_name):
    """Copy a region of the same image elsewhere, rotated and/or scaled."""
    h, w = img.shape[:2]
    m, shape = R.random_region(rng, h, w, area=(0.01, 0.1))
    y0, y1, x0, x1 = R.bbox(m)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    ang = float(rng.uniform(-30, 30)) if rng.random() < 0.6 else 0.0
    sc = float(np.exp(rng.uniform(np.log(0.75), np.log(1.3)))) if rng.random() < 0.6 else 1.0
    # the source centre: somewhere else, at least a region's size away
    span = max(y1 - y0, x1 - x0)
    for _ in range(10):
        sy, sx = rng.uniform(span / 2, max(span / 2 + 1, h - span / 2)), rng.uniform(span / 2, max(span / 2 + 1, w - span / 2))
        if np.hypot(sy - cy, sx - cx) > 0.6 * span:
            break
    # M maps destination pixel -> source pixel (used with WARP_INVERSE_MAP)
    M = cv2.getRotationMatrix2D((cx, cy), ang, 1.0 / sc)
    M[:, 2] += (sx - cx, sy - cy)
    moved = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT)
    alpha, sigma = R.feather(rng, m, hard_p=0.5)
    info = {"shape": shape, "angle": round(ang, 1), "scale": round(sc, 3), "feather": round(sigma, 2)}
    return img, R.composite(img, moved, alpha), info


def inpaint_removal(rng, img, src_name):
    """Remove an object-sized region with OpenCV inpainting (Telea or Navier-Stokes)."""
    h, w = img.shape[:2]
    m, shape = R.random_region(rng, h, w, area=(0.003, 0.04), shapes=("ellipse", "blob", "polygon", "stroke"))
    y0, y1, x0, x1 = R.bbox(m, pad=12)  # inpaint only around the hole: its cost grows with the image
    method = cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS
    radius = int(rng.integers(3, 8))
    out = img.copy()
    out[y0:y1, x0:x1] = cv2.inpaint(np.ascontiguousarray(img[y0:y1, x0:x1]),
                                    (m[y0:y1, x0:x1] * 255).astype(np.uint8), radius, method)
    return img, out, {"shape": shape, "method": "telea" if method == cv2.INPAINT_TELEA else "ns", "radius": radius}


def retouch(rng, img, src_name):
    """Local blur, sharpen, noise or colour change inside a (maybe feathered) region."""
    h, w = img.shape[:2]
    m, shape = R.random_region(rng, h, w, area=(0.02, 0.2))
    y0, y1, x0, x1 = R.bbox(m, pad=16)
    roi = np.ascontiguousarray(img[y0:y1, x0:x1])
    op = ("blur", "sharpen", "noise", "colour", "median")[int(rng.integers(5))]
    if op == "blur":
        edited = cv2.GaussianBlur(roi, (0, 0), float(rng.uniform(1.0, 3.5)))
    elif op == "median":
        edited = cv2.medianBlur(roi, int(rng.choice([3, 5])))
    elif op == "sharpen":
        edited = sharpen(roi, float(rng.uniform(0.8, 2.5)), float(rng.uniform(0.8, 2.0)))
    elif op == "noise":
        edited = add_noise(rng, roi, float(rng.uniform(4, 12)))
    else:
        hsv = cv2.cvtColor(roi, cv2.COLOR_RGB2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(8, 40)) * int(rng.choice([-1, 1]))) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.7, 1.4), 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + rng.integers(-30, 31), 0, 255)
        edited = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    src = img.copy()
    src[y0:y1, x0:x1] = edited
    alpha, sigma = R.feather(rng, m)
    return img, R.composite(img, src, alpha), {"shape": shape, "op": op, "feather": round(sigma, 2)}


def resample(rng, img, src_name):
    """Replace a region by a rescaled (and slightly rotated) copy of itself: interpolation traces."""
    h, w = img.shape[:2]
    m, shape = R.random_region(rng, h, w, area=(0.03, 0.2))
    y0, y1, x0, x1 = R.bbox(m)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    s = float(rng.uniform(1.08, 1.5)) if rng.random() < 0.5 else float(rng.uniform(0.7, 0.93))
    ang = float(rng.uniform(-6, 6)) if rng.random() < 0.4 else 0.0
    M = cv2.getRotationMatrix2D((cx, cy), ang, s)
    interp = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST)[int(rng.integers(3))]
    warped = cv2.warpAffine(img, M, (w, h), flags=interp, borderMode=cv2.BORDER_REFLECT)
    alpha, sigma = R.feather(rng, m)
    return img, R.composite(img, warped, alpha), {"shape": shape, "scale": round(s, 3), "angle": round(ang, 1),
                                                  "feather": round(sigma, 2)}


def double_jpeg(rng, img, src_name):
    """The image is a JPEG (quality q1); a region comes from a recompression at q2 and/or a shifted grid.

    Shape edges are hard: a recompressed region pasted with a feathered edge would be a splice.
    """
    h, w = img.shape[:2]
    q1 = int(rng.integers(60, 96))
    before = jpeg(img, q1)
    q2 = int(rng.integers(50, 100))
    while abs(q2 - q1) < 8:
        q2 = int(rng.integers(50, 100))
    dy, dx = (int(rng.integers(1, 8)), int(rng.integers(1, 8))) if rng.random() < 0.5 else (0, 0)
    variant = before.copy()
    variant[dy:, dx:] = jpeg(np.ascontiguousarray(before[dy:, dx:]), q2)
    m, shape = R.random_region(rng, h, w, area=(0.03, 0.25), shapes=("rect", "polygon", "ellipse", "blob"))
    after = R.composite(before, variant, m.astype(np.float32))
    return before, after, {"shape": shape, "q1": q1, "q2": q2, "grid_shift": [dy, dx]}


# kind -> (op, weight). Weights favour the kinds real forgers use most.
NATURAL_OPS = {
    "splice": (splice, 3.0),
    "copy_move": (copy_move, 2.0),
    "inpaint": (inpaint_removal, 1.5),
    "retouch": (retouch, 1.5),
    "resample": (resample, 1.0),
    "double_jpeg": (double_jpeg, 1.0),
}
