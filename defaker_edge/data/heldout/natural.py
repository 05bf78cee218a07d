"""Natural-photo forgeries, written independently of the training generator.

Each edit takes the cropped photo (uint8 RGB) and returns the edited image and its parameters;
the caller derives the mask as exactly the pixels that changed.
"""

from __future__ import annotations

import cv2
import numpy as np

from .codec import roundtrip
from .regions import blend, blob, feather


def _sigma(rng) -> float:
    # half hard-edged, half feathered over a few pixels (alpha-matted splices look like the latter)
    return 0.0 if rng.random() < 0.5 else float(rng.uniform(1.0, 5.0))


def splice(rng, img, donor):
    """Paste a region of another held-out photo, maybe rescaled, hard or feathered."""
    h, w = img.shape[:2]
    scale = float(rng.uniform(0.6, 1.5)) if rng.random() < 0.5 else 1.0
    if scale != 1.0:
        donor = cv2.resize(donor, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    dh, dw = donor.shape[:2]
    m = blob(rng, h, w, (0.015, 0.15))
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bh, bw = y1 - y0, x1 - x0
    if dh < bh or dw < bw:  # donor smaller than the region: tile it up by resizing
        f = max(bh / dh, bw / dw) * 1.01
        donor = cv2.resize(donor, (int(dw * f) + 1, int(dh * f) + 1), interpolation=cv2.INTER_CUBIC)
        dh, dw = donor.shape[:2]
    sy, sx = int(rng.integers(0, dh - bh + 1)), int(rng.integers(0, dw - bw + 1))
    top = img.copy()
    top[y0:y1, x0:x1] = donor[sy:sy + bh, sx:sx + bw]
    sigma = _sigma(rng)
    return blend(img, top, feather(m, sigma)), {"feather": round(sigma, 2), "scale": round(scale, 3)}


def copy_move(rng, img, donor=None):
    """Copy a region of the same photo elsewhere, rotated/scaled, at an arbitrary (off-grid) shift."""
    h, w = img.shape[:2]
    m = blob(rng, h, w, (0.01, 0.08))
    ang = float(rng.uniform(-35, 35)) if rng.random() < 0.6 else 0.0
    sc = float(rng.uniform(0.75, 1.3)) if rng.random() < 0.5 else 1.0
    ys, xs = np.nonzero(m)
    cy, cx = ys.mean(), xs.mean()
    for _ in range(20):  # a destination that keeps the region mostly inside and away from the source
        dy, dx = rng.uniform(-0.45, 0.45) * h, rng.uniform(-0.45, 0.45) * w
        if abs(dy) + abs(dx) > 0.2 * (h + w) / 2 and 0 <= cy + dy < h and 0 <= cx + dx < w:
            break
    M = cv2.getRotationMatrix2D((float(cx), float(cy)), ang, sc)
    M[:, 2] += (dx, dy)
    warped = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    wm = cv2.warpAffine(m.astype(np.uint8), M, (w, h), flags=cv2.INTER_NEAREST) > 0
    sigma = _sigma(rng)
    return blend(img, warped, feather(wm, sigma)), {"angle": round(ang, 2), "scale": round(sc, 3),
                                                   "shift": [round(float(dx), 1), round(float(dy), 1)],
                                                   "feather": round(sigma, 2)}


def inpaint_cv(rng, img, donor=None):
    """Remove an object with OpenCV's inpainting (Telea or Navier-Stokes)."""
    h, w = img.shape[:2]
    m = blob(rng, h, w, (0.004, 0.04))
    method = "telea" if rng.random() < 0.5 else "ns"
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    out = cv2.inpaint(img, m.astype(np.uint8), float(rng.uniform(3, 9)), flag)
    return out, {"method": method}


def inpaint_exemplar(rng, img, donor=None, block: int = 12, candidates: int = 300):
    """Remove an object by exemplar fill: blocks from the outside in, each copied from the candidate
    source block whose already-known pixels best match (sum of squared differences)."""
    h, w = img.shape[:2]
    m = blob(rng, h, w, (0.004, 0.035))
    ys, xs = np.nonzero(m)
    y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, h)
    x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, w)
    out = img.astype(np.float32).copy()
    known = ~m
    b = block
    ov = b // 3  # blocks overlap by a third so each one has known pixels to match against
    step = b - ov
    # source candidates: random blocks entirely outside the hole
    cy = rng.integers(0, h - b, candidates * 3)
    cx = rng.integers(0, w - b, candidates * 3)
    ok = np.array([not m[y:y + b, x:x + b].any() for y, x in zip(cy, cx)])
    cy, cx = cy[ok][:candidates], cx[ok][:candidates]
    if len(cy) == 0:
        return inpaint_cv(rng, img)
    src = np.stack([out[y:y + b, x:x + b] for y, x in zip(cy, cx)])  # [N, b, b, 3]
    # visit blocks in order of distance to the hole's border (onion peel)
    dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    pos = [(y, x) for y in range(y0, max(y0 + 1, y1 - b + step), step)
           for x in range(x0, max(x0 + 1, x1 - b + step), step)]
    pos = [(min(y, h - b), min(x, w - b)) for y, x in pos]
    pos = [p for p in pos if m[p[0]:p[0] + b, p[1]:p[1] + b].any()]
    pos.sort(key=lambda p: float(dist[p[0]:p[0] + b, p[1]:p[1] + b].max()))
    for y, x in pos:
        tgt = out[y:y + b, x:x + b]
        kn = known[y:y + b, x:x + b]
        if kn.any():
            d = ((src - tgt[None]) ** 2).sum(-1)[:, kn].sum(1)
        else:
            d = rng.random(len(src))
        best = src[int(np.argmin(d))]
        hole = ~kn
        tgt[hole] = best[hole]
        known[y:y + b, x:x + b] = True
    res = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    res[~m] = img[~m]  # only the hole may change
    return res, {"block": b, "candidates": int(len(src))}


RETOUCH_OPS = ("blur", "sharpen", "noise", "median", "brightness_contrast")


def retouch(rng, img, donor=None):
    """A local filter inside a region: blur, sharpen, noise, median or brightness/contrast."""
    h, w = img.shape[:2]
    m = blob(rng, h, w, (0.01, 0.12))
    op = RETOUCH_OPS[int(rng.integers(0, len(RETOUCH_OPS)))]
    f = img.astype(np.float32)
    if op == "blur":
        s = float(rng.uniform(0.8, 3.0))
        top = cv2.GaussianBlur(img, (0, 0), s)
        p = {"sigma": round(s, 2)}
    elif op == "sharpen":
        a = float(rng.uniform(0.5, 2.0))
        top = np.clip(f + a * (f - cv2.GaussianBlur(f, (0, 0), 1.5)), 0, 255)
        p = {"amount": round(a, 2)}
    elif op == "noise":
        s = float(rng.uniform(2.0, 9.0))
        top = np.clip(f + rng.normal(0, s, f.shape), 0, 255)
        p = {"sigma": round(s, 2)}
    elif op == "median":
        k = int(rng.choice([3, 5]))
        top = cv2.medianBlur(img, k)
        p = {"ksize": k}
    else:
        g, o = float(rng.uniform(0.8, 1.25)), float(rng.uniform(-25, 25))
        top = np.clip((f - 128) * g + 128 + o, 0, 255)
        p = {"contrast": round(g, 3), "brightness": round(o, 1)}
    sigma = _sigma(rng)
    return blend(img, top, feather(m, sigma)), {"op": op, **p, "feather": round(sigma, 2)}


def local_recompress(rng, img, donor=None):
    """A region re-saved at another JPEG quality, on the image's 8x8 grid or shifted off it."""
    h, w = img.shape[:2]
    m = blob(rng, h, w, (0.02, 0.2))
    ys, xs = np.nonzero(m)
    y0, x0 = int(ys.min()), int(xs.min())
    aligned = rng.random() < 0.5
    if aligned:
        y0, x0 = y0 - y0 % 8, x0 - x0 % 8
    y1, x1 = int(ys.max()) + 1, int(xs.max()) + 1
    q = int(rng.integers(30, 91))
    patch = roundtrip(np.ascontiguousarray(img[y0:y1, x0:x1]), "JPEG", q)
    top = img.copy()
    top[y0:y1, x0:x1] = patch
    sigma = 0.0 if rng.random() < 0.7 else float(rng.uniform(1.0, 3.0))
    return blend(img, top, feather(m, sigma)), {"quality": q, "grid_aligned": aligned, "feather": round(sigma, 2)}


def resample(rng, img, donor=None):
    """A region resampled: scaled down and back up, or slightly rotated/scaled in place."""
    h, w = img.shape[:2]
    m = blob(rng, h, w, (0.02, 0.15))
    if rng.random() < 0.5:
        f = float(rng.uniform(0.4, 0.85))
        small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        interp = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST][int(rng.integers(0, 3))]
        top = cv2.resize(small, (w, h), interpolation=interp)
        p = {"mode": "down_up", "factor": round(f, 3)}
    else:
        ys, xs = np.nonzero(m)
        ang, sc = float(rng.uniform(-6, 6)), float(rng.uniform(0.9, 1.15))
        M = cv2.getRotationMatrix2D((float(xs.mean()), float(ys.mean())), ang, sc)
        top = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        p = {"mode": "warp", "angle": round(ang, 2), "scale": round(sc, 3)}
    sigma = _sigma(rng)
    return blend(img, top, feather(m, sigma)), {**p, "feather": round(sigma, 2)}


KINDS = {"splice": splice, "copy_move": copy_move, "inpaint_cv": inpaint_cv,
         "inpaint_exemplar": inpaint_exemplar, "retouch": retouch, "local_recompress": local_recompress,
         "resample": resample}
