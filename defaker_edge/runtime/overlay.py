"""Overlays for people: the binary mask's outline and a faint tint of the heatmap in a colour the
image does not have, and a caption with the verdict, so the picture says what the model said on its own.

A fixed red tint vanished on red pictures and showed nothing of the decision; the outline is the
package's pixel threshold (the binary mask `check` writes), and its colour is chosen per image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

# saturated colours, far apart; the one farthest from the pixels under the outline is used
PALETTE = np.array([[255, 0, 255], [0, 255, 255], [255, 255, 0], [0, 255, 0], [255, 0, 0], [0, 96, 255]],
                   dtype=np.float32)
CUT = 0.5


def _binary(mask: np.ndarray, cut: float = CUT) -> np.ndarray:
    return mask >= (round(cut * 255) if mask.dtype == np.uint8 else cut)


def outline(region: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of `region` (bool [H, W]) that touch its outside, thickened inwards to `width` px."""
    edge = np.zeros_like(region)
    inner = region.copy()
    for _ in range(max(1, width)):
        er = inner.copy()  # 4-neighbour erosion; the image border counts as outside
        er[1:] &= inner[:-1]
        er[:-1] &= inner[1:]
        er[:, 1:] &= inner[:, :-1]
        er[:, :-1] &= inner[:, 1:]
        er[0, :] = er[-1, :] = False
        er[:, 0] = er[:, -1] = False
        edge |= inner & ~er
        inner = er
    return edge


def contrast_colour(pixels: np.ndarray) -> np.ndarray:
    """The palette colour farthest (RGB distance) from the mean of `pixels` ([N, 3] uint8)."""
    mean = pixels.reshape(-1, 3).astype(np.float32).mean(axis=0) if pixels.size else np.full(3, 128.0, np.float32)
    return PALETTE[int(np.argmax(((PALETTE - mean) ** 2).sum(axis=1)))]


def overlay(img: np.ndarray, mask: np.ndarray, *, alpha: float = 0.35, chunk_rows: int = 512,
            colour: np.ndarray | None = None, cut: float = CUT) -> np.ndarray:
    """uint8 [H,W,3] image + [H,W] mask probabilities (float in [0,1] or uint8 0..255) -> uint8 [H,W,3].

    Each pixel is blended towards the contrast colour by alpha × its probability (a confident region
    clearly tinted, an unsure one faintly), and the outline of mask >= cut is drawn solid. Row
    chunks keep a 100 MP image's float copy small.
    """
    if img.shape[:2] != mask.shape[:2]:
        raise ValueError(f"mask {mask.shape[:2]} does not match image {img.shape[:2]}")
    region = _binary(mask, cut)
    edge = outline(region, width=max(1, round(min(img.shape[:2]) / 300)))
    if colour is None:
        under = img[edge] if edge.any() else img[::max(1, img.shape[0] // 64), ::max(1, img.shape[1] // 64)]
        colour = contrast_colour(under)
    scale = 1.0 / 255.0 if mask.dtype == np.uint8 else 1.0
    out = np.empty_like(img)
    for r in range(0, img.shape[0], chunk_rows):
        sl = slice(r, r + chunk_rows)
        a = (mask[sl].astype(np.float32) * (scale * alpha))[..., None]
        out[sl] = np.clip(np.rint(img[sl].astype(np.float32) * (1.0 - a) + colour * a), 0, 255).astype(np.uint8)
    out[edge] = colour.astype(np.uint8)
    return out


def caption_of(verdict: Any) -> str:
    """'FAKE  p=0.873  threshold 0.567  | outline: heatmap >= 0.31' from a Verdict, and a second line
    when the score fell in the calibrated uncertainty band: 'uncertain, re-checked at FP32' (the
    answer shown is the FP32 one), or that it could not be re-checked."""
    word = "FAKE" if verdict.is_fake else "real"
    cut = getattr(verdict, "pixel_threshold", CUT)
    text = f"{word}  p={verdict.fake_prob:.3f}  threshold {verdict.threshold:.3f}  | outline: heatmap >= {cut:.2f}"
    if getattr(verdict, "uncertain", False):
        rechecked = verdict.precision == "fp32"
        text += "\nuncertain, re-checked at FP32" if rechecked else "\nuncertain, not re-checked at FP32"
    return text


def draw_caption(im, text: str) -> None:
    """The caption on a dark box in the top-left corner, sized to the image."""
    from PIL import ImageDraw, ImageFont

    size = max(10, min(im.width, im.height) // 32)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(im)
    pad = max(2, size // 4)
    x0, y0, x1, y1 = draw.multiline_textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, min(im.width, x1 + pad), min(im.height, y1 + pad)), fill=(0, 0, 0))
    draw.multiline_text((pad, pad), text, fill=(255, 255, 255), font=font)


def save_overlay(path: str | os.PathLike, img: np.ndarray, mask: np.ndarray, quality: int = 90,
                 caption: str | None = None, format: str = "JPEG", cut: float = CUT) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(overlay(img, mask, cut=cut))
    if caption:
        draw_caption(im, caption)
    im.save(path, format=format, **({"quality": quality} if format == "JPEG" else {}))
