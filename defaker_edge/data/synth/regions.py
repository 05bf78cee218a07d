"""Region shapes, feathering and compositing shared by every manipulation.

Ground truth is pixel-exact by construction: a manipulation returns the image before and after,
and the mask is `changed(before, after)`, the pixels whose stored value differs. The shapes here
only decide where a manipulation *tries* to act.
"""

from __future__ import annotations

import cv2
import numpy as np


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels whose value differs in any channel."""
    return np.any(before != after, axis=2)


def _ellipse(rng, h, w, cy, cx, r):
    m = np.zeros((h, w), np.uint8)
    axes = (max(2, int(r * rng.uniform(0.6, 1.4))), max(2, int(r * rng.uniform(0.6, 1.4))))
    cv2.ellipse(m, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_8)
    return m


def _polygon(rng, h, w, cy, cx, r):
    # a star-shaped polygon with jittered radii: irregular like a hand-drawn selection
    k = int(rng.integers(5, 14))
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    rad = r * rng.uniform(0.5, 1.3, k)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).round().astype(np.int32)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [pts], 255, cv2.LINE_8)
    return m


def _blob(rng, h, w, cy, cx, r):
    # thresholded low-frequency noise inside a disc: organic object-like outlines
    g = rng.normal(size=(6, 6)).astype(np.float32)
    s = int(2 * r) + 2
    field = cv2.resize(g, (s, s), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    d = np.hypot(yy - s / 2, xx - s / 2) / (s / 2)
    blob = ((field * 0.5 + 1.2 - 1.4 * d) > 0).astype(np.uint8) * 255
    m = np.zeros((h, w), np.uint8)
    y0, x0 = int(cy - s / 2), int(cx - s / 2)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + s), min(w, x0 + s)
    if ye > ys and xe > xs:
        m[ys:ye, xs:xe] = blob[ys - y0:ye - y0, xs - x0:xe - x0]
    return m


def _rect(rng, h, w, cy, cx, r):
    m = np.zeros((h, w), np.uint8)
    rh, rw = r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5)
    m[max(0, int(cy - rh)):int(cy + rh), max(0, int(cx - rw)):int(cx + rw)] = 255
    return m


def _stroke(rng, h, w, cy, cx, r):
    # a brush stroke, as an editing tool paints it
    k = int(rng.integers(2, 5))
    pts = np.stack([cx + rng.uniform(-r, r, k), cy + rng.uniform(-r, r, k)], 1).round().astype(np.int32)
    m = np.zeros((h, w), np.uint8)
    cv2.polylines(m, [pts], False, 255, max(3, int(r * rng.uniform(0.2, 0.5))), cv2.LINE_8)
    return m


SHAPES = {"ellipse": _ellipse, "polygon": _polygon, "blob": _blob, "rect": _rect, "stroke": _stroke}


def random_region(rng: np.random.Generator, h: int, w: int, area=(0.01, 0.15), shapes=None,
                  margin: int = 2) -> tuple[np.ndarray, str]:
    """A bool [H, W] region covering roughly `area` of the image (kept `margin` px from the border)."""
    names = list(shapes or SHAPES)
    for _ in range(8):
        name = names[int(rng.integers(len(names)))]
        frac = rng.uniform(*area)
        r = max(4.0, np.sqrt(frac * h * w / np.pi))
        r = min(r, 0.45 * min(h, w))
        cy = rng.uniform(min(r, h / 2), max(h - r, h / 2))
        cx = rng.uniform(min(r, w / 2), max(w - r, w / 2))
        m = SHAPES[name](rng, h, w, cy, cx, r) > 0
        if margin:
            m[:margin], m[-margin:], m[:, :margin], m[:, -margin:] = False, False, False, False
        if m.sum() >= 16:
            return m, name
    m = np.zeros((h, w), bool)
    m[h // 3:2 * h // 3, w // 3:2 * w // 3] = True
    return m, "rect"


def feather(rng: np.random.Generator, m: np.ndarray, hard_p: float = 0.4) -> tuple[np.ndarray, float]:
    """Alpha float32 [H, W] in [0, 1]: the region as is (hard edge) or Gaussian-feathered."""
    a = m.astype(np.float32)
    if rng.random() < hard_p:
        return a, 0.0
    sigma = float(rng.uniform(0.8, 4.0))
    return cv2.GaussianBlur(a, (0, 0), sigma), sigma


def bbox(m: np.ndarray, pad: int = 0) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the True/nonzero pixels, padded and clipped; the full image if empty."""
    ys = np.flatnonzero(m.any(axis=1))
    xs = np.flatnonzero(m.any(axis=0))
    h, w = m.shape[:2]
    if len(ys) == 0:
        return 0, h, 0, w
    return (max(0, ys[0] - pad), min(h, ys[-1] + 1 + pad), max(0, xs[0] - pad), min(w, xs[-1] + 1 + pad))


def composite(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """round(alpha*src + (1-alpha)*dst), computed only inside alpha's support (fast for small regions)."""
    out = dst.copy()
    y0, y1, x0, x1 = bbox(alpha > 1e-3)
    a = alpha[y0:y1, x0:x1, None]
    d = dst[y0:y1, x0:x1].astype(np.float32)
    s = src[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(np.rint(d + a * (s - d)), 0, 255).astype(np.uint8)
    return out


def match_colour(src: np.ndarray, dst: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Shift src so its mean/std per channel inside m match dst's (a splicer's colour matching)."""
    y0, y1, x0, x1 = bbox(m)
    sel = m[y0:y1, x0:x1]
    s = src[y0:y1, x0:x1][sel].astype(np.float32)
    d = dst[y0:y1, x0:x1][sel].astype(np.float32)
    gain = (d.std(0) + 1.0) / (s.std(0) + 1.0)
    gain = np.clip(gain, 0.5, 2.0)
    out = (src.astype(np.float32) - s.mean(0)) * gain + d.mean(0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
