"""Procedural face-like images and face manipulations (region swap / blend).

These are NOT photographs of people: they are drawn (ellipse head with a skin-tone gradient,
hair, eyes, brows, nose, mouth, ears, neck and shoulders over a blurred background), then passed
through optics blur and sensor noise. They teach the mechanics of face swapping (a region from
another face, blended with Poisson cloning or a feathered alpha), not the look of real faces.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import regions as R
from .postprocess import add_noise
from .scenes import natural_source

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 132], [198, 134, 96], [161, 102, 70],
                  [120, 74, 50], [90, 56, 40]], np.float32)
_IRIS = np.array([[70, 45, 25], [110, 75, 40], [60, 100, 150], [80, 120, 80], [40, 30, 25]], np.float32)
_HAIR = np.array([[20, 15, 12], [60, 40, 25], [110, 80, 45], [200, 170, 110], [140, 60, 30], [150, 150, 150]],
                 np.float32)


def _c(v) -> tuple[int, int, int]:
    return tuple(int(x) for x in np.clip(v, 0, 255))


def _background(rng, h, w, scene: bool) -> np.ndarray:
    if not scene:  # a donor face: only its inner part is used, so skip the costly backdrop
        return np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    bg, _ = natural_source(rng, h, w, photo_p=0.4)
    # shallow depth of field; blurred at quarter size because a wide Gaussian at full size is slow
    small = cv2.resize(bg, (max(8, w // 4), max(8, h // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), float(rng.uniform(0.5, 2.0)))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def render_face(rng: np.random.Generator, h: int, w: int, scene: bool = True) -> tuple[np.ndarray, dict]:
    """Returns (RGB uint8, landmarks): 'face' (cx, cy, ax, ay) and boxes (y0, y1, x0, x1) for
    'eyes', 'mouth', 'nose' and 'inner' (eyes-to-chin, what a face swap replaces)."""
    img = _background(rng, h, w, scene)
    s = min(h, w)
    ay = s * rng.uniform(0.25, 0.38)
    ax = ay * rng.uniform(0.68, 0.85)
    cx = w / 2 + rng.uniform(-0.1, 0.1) * w
    cy = h / 2 + rng.uniform(-0.05, 0.1) * h
    skin = _SKIN[int(rng.integers(len(_SKIN)))] * rng.uniform(0.9, 1.08, 3)
    cloth = rng.uniform(20, 235, 3)
    hair = _HAIR[int(rng.integers(len(_HAIR)))] * rng.uniform(0.85, 1.15, 3)
    ic = (int(cx), int(cy))
    # shoulders and neck
    cv2.ellipse(img, (ic[0], int(cy + ay * 1.9)), (int(ax * 2.2), int(ay * 0.9)), 0, 0, 360, _c(cloth), -1, cv2.LINE_AA)
    cv2.rectangle(img, (int(cx - ax * 0.4), int(cy + ay * 0.5)), (int(cx + ax * 0.4), int(cy + ay * 1.2)),
                  _c(skin * 0.85), -1, cv2.LINE_AA)
    # hair behind the head, ears, head
    cv2.ellipse(img, (ic[0], int(cy - ay * 0.1)), (int(ax * 1.12), int(ay * rng.uniform(1.02, 1.2))), 0, 0, 360,
                _c(hair), -1, cv2.LINE_AA)
    for sgn in (-1, 1):
        cv2.ellipse(img, (int(cx + sgn * ax * 0.97), int(cy)), (int(ax * 0.15), int(ay * 0.2)), 0, 0, 360,
                    _c(skin * 0.9), -1, cv2.LINE_AA)
    head = np.zeros((h, w), np.uint8)
    cv2.ellipse(head, ic, (int(ax), int(ay)), 0, 0, 360, 255, -1, cv2.LINE_AA)
    # skin with a light-direction gradient (shading), only inside the head's bounding box
    y0, y1, x0, x1 = R.bbox(head > 0)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    th = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + 0.18 * (((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / ax)
    shade -= 0.12 * (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    a = head[y0:y1, x0:x1, None].astype(np.float32) / 255.0
    face_px = skin * shade[..., None]
    region = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(np.rint(region * (1 - a) + face_px * a), 0, 255).astype(np.uint8)
    # fringe: hair over the forehead
    cv2.ellipse(img, (int(cx + rng.uniform(-0.2, 0.2) * ax), int(cy - ay * 0.85)),
                (int(ax * rng.uniform(0.8, 1.05)), int(ay * rng.uniform(0.2, 0.4))), float(rng.uniform(-10, 10)),
                180, 360, _c(hair), -1, cv2.LINE_AA)
    cv2.ellipse(img, (int(cx), int(cy - ay * 0.78)), (int(ax * 0.95), int(ay * 0.22)), 0, 180, 360,
                _c(hair), -1, cv2.LINE_AA)
    # eyes and brows
    ey = cy - ay * rng.uniform(0.12, 0.25)
    ex = ax * rng.uniform(0.36, 0.46)
    er = ax * rng.uniform(0.13, 0.2)
    iris = _IRIS[int(rng.integers(len(_IRIS)))]
    for sgn in (-1, 1):
        c = (int(cx + sgn * ex), int(ey))
        cv2.ellipse(img, c, (int(er), int(er * 0.55)), 0, 0, 360, (240, 238, 232), -1, cv2.LINE_AA)
        cv2.circle(img, c, max(1, int(er * 0.45)), _c(iris), -1, cv2.LINE_AA)
        cv2.circle(img, c, max(1, int(er * 0.2)), (10, 10, 10), -1, cv2.LINE_AA)
        cv2.circle(img, (c[0] + int(er * 0.12), c[1] - int(er * 0.12)), max(1, int(er * 0.07)), (255, 255, 255), -1,
                   cv2.LINE_AA)
        cv2.ellipse(img, c, (int(er), int(er * 0.55)), 0, 180, 360, _c(skin * 0.45), max(1, int(er * 0.12)),
                    cv2.LINE_AA)
        cv2.ellipse(img, (c[0], int(ey - er * 0.9)), (int(er * 1.1), int(er * 0.35)), 0, 200, 340, _c(hair * 0.8),
                    max(1, int(er * 0.25)), cv2.LINE_AA)
    # nose and mouth
    ny = cy + ay * rng.uniform(0.08, 0.2)
    cv2.line(img, (int(cx), int(ey + er * 0.5)), (int(cx - ax * 0.05), int(ny)), _c(skin * 0.75),
             max(1, int(ax * 0.03)), cv2.LINE_AA)
    for sgn in (-1, 1):
        cv2.ellipse(img, (int(cx + sgn * ax * 0.08), int(ny)), (max(1, int(ax * 0.05)), max(1, int(ax * 0.025))), 0,
                    0, 360, _c(skin * 0.55), -1, cv2.LINE_AA)
    my = cy + ay * rng.uniform(0.42, 0.55)
    mw = ax * rng.uniform(0.28, 0.42)
    lips = np.array([rng.uniform(150, 210), rng.uniform(60, 110), rng.uniform(70, 110)]) * (skin.mean() / 200) ** 0.3
    cv2.ellipse(img, (int(cx), int(my)), (int(mw), max(2, int(mw * rng.uniform(0.2, 0.4)))), 0, 0, 360, _c(lips), -1,
                cv2.LINE_AA)
    cv2.line(img, (int(cx - mw), int(my)), (int(cx + mw), int(my)), _c(lips * 0.45), max(1, int(mw * 0.06)),
             cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.3)))
    img = add_noise(rng, img, float(rng.uniform(0.8, 3.0)))

    def box(yc, xc, hy, hx):
        return (int(max(2, yc - hy)), int(min(h - 2, yc + hy)), int(max(2, xc - hx)), int(min(w - 2, xc + hx)))

    lm = {"face": (cx, cy, ax, ay),
          "eyes": box(ey - er * 0.3, cx, er * 1.3, ex + er * 1.4),
          "mouth": box(my, cx, mw * 0.6, mw * 1.35),
          "nose": box((ey + ny) / 2 + er * 0.3, cx, (ny - ey) / 2 + er * 0.4, ax * 0.18),
          "inner": box(cy + ay * 0.12, cx, ay * 0.72, ax * 0.78)}
    return img, lm


def _blend(rng, dst, src, m):
    """Poisson (seamlessClone) or feathered-alpha blend of src into dst over the bool region m."""
    h, w = dst.shape[:2]
    if rng.random() < 0.55:
        y0, y1, x0, x1 = R.bbox(m)
        if y0 >= 2 and x0 >= 2 and y1 <= h - 2 and x1 <= w - 2:
            mask8 = (m * 255).astype(np.uint8)
            centre = (x0 + (x1 - x0) // 2, y0 + (y1 - y0) // 2)
            flag = cv2.NORMAL_CLONE if rng.random() < 0.7 else cv2.MIXED_CLONE
            out = cv2.seamlessClone(src, dst, mask8, centre, flag)
            return out, "poisson" if flag == cv2.NORMAL_CLONE else "poisson_mixed"
    alpha, sigma = R.feather(rng, m, hard_p=0.15)
    return R.composite(dst, src, alpha), f"alpha{sigma:.1f}"


def _ellipse_mask(h, w, box, rng) -> np.ndarray:
    y0, y1, x0, x1 = box
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, ((x0 + x1) // 2, (y0 + y1) // 2), (max(2, (x1 - x0) // 2), max(2, (y1 - y0) // 2)), 0, 0, 360,
                255, -1, cv2.LINE_8)
    m[:3], m[-3:], m[:, :3], m[:, -3:] = 0, 0, 0, 0
    return m > 0


def _donor_aligned(rng, img, lm, part):
    """Render another face and warp its `part` box onto this face's `part` box."""
    h, w = img.shape[:2]
    donor, dlm = render_face(rng, h, w, scene=False)
    sy0, sy1, sx0, sx1 = dlm[part]
    ty0, ty1, tx0, tx1 = lm[part]
    src = np.float32([[sx0, sy0], [sx1, sy0], [sx0, sy1]])
    dst = np.float32([[tx0, ty0], [tx1, ty0], [tx0, ty1]])
    M = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(donor, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _swap(rng, img, lm, part):
    h, w = img.shape[:2]
    warped = _donor_aligned(rng, img, lm, part)
    m = _ellipse_mask(h, w, lm[part], rng)
    matched = bool(rng.random() < 0.5)
    if matched:  # skin tone matched to the target, as face-swap pipelines do before blending
        warped = R.match_colour(warped, img, m)
    out, how = _blend(rng, img, warped, m)
    return img, out, {"part": part, "blend": how, "colour_matched": matched}


def face_swap(rng, img, lm):
    """Whole inner face (eyes to chin) from another synthetic face."""
    return _swap(rng, img, lm, "inner")


def face_part_swap(rng, img, lm):
    """Eyes, mouth or nose from another synthetic face."""
    return _swap(rng, img, lm, ("eyes", "mouth", "nose")[int(rng.integers(3))])


def face_retouch(rng, img, lm):
    """Skin smoothing / beautification inside the face (edge-preserving filter)."""
    h, w = img.shape[:2]
    m = _ellipse_mask(h, w, lm["inner"], rng)
    y0, y1, x0, x1 = R.bbox(m, pad=8)
    roi = np.ascontiguousarray(img[y0:y1, x0:x1])
    sm = cv2.bilateralFilter(roi, int(rng.choice([5, 7, 9])), float(rng.uniform(20, 60)), float(rng.uniform(3, 9)))
    # beautification also lifts the skin tone a little, so (almost) every face pixel changes
    sm = cv2.convertScaleAbs(sm, alpha=float(rng.uniform(1.03, 1.1)), beta=float(rng.uniform(1, 6)))
    src = img.copy()
    src[y0:y1, x0:x1] = sm
    alpha, sigma = R.feather(rng, m, hard_p=0.2)
    return img, R.composite(img, src, alpha), {"part": "inner", "blend": f"alpha{sigma:.1f}"}


FACE_OPS = {
    "face_swap": (face_swap, 2.0),
    "face_part_swap": (face_part_swap, 2.0),
    "face_retouch": (face_retouch, 1.0),
}


def rescale_landmarks(lm: dict, sy: float, sx: float, h: int, w: int) -> dict:
    """Landmarks after the face image was resized by (sy, sx)."""
    cx, cy, ax, ay = lm["face"]
    out = {"face": (cx * sx, cy * sy, ax * sx, ay * sy)}
    for k, (y0, y1, x0, x1) in lm.items():
        if k != "face":
            out[k] = (max(2, int(y0 * sy)), min(h - 2, int(np.ceil(y1 * sy))),
                      max(2, int(x0 * sx)), min(w - 2, int(np.ceil(x1 * sx))))
    return out
