"""Overlays: the 0.5 outline in a colour the image lacks, and a caption with the verdict."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from defaker_edge.runtime.overlay import PALETTE, caption_of, outline, overlay, save_overlay


def _mask(h=60, w=80) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[20:40, 30:60] = 0.9  # above the cut
    m[0:10, 0:10] = 0.4  # below it: tinted faintly, no outline
    return m


def test_outline_is_the_border_of_the_half_cut():
    edge = outline(_mask() >= 0.5)
    assert edge[20, 30:60].all() and edge[39, 30:60].all() and edge[20:40, 30].all()
    assert not edge[25:35, 35:55].any() and not edge[:10, :10].any()


def test_outline_colour_contrasts_with_a_red_picture():
    red = np.zeros((60, 80, 3), np.uint8)
    red[..., 0] = 220
    out = overlay(red, _mask())
    c = out[20, 40].astype(int)
    assert np.linalg.norm(c - [220, 0, 0]) > 250  # not red on red
    assert c.tolist() in PALETTE.astype(int).tolist()
    assert (out[50:, :25] == red[50:, :25]).all()  # mask 0: untouched


def test_caption_carries_verdict_score_and_threshold(tmp_path):
    v = SimpleNamespace(is_fake=True, fake_prob=0.8731, threshold=0.5669)
    text = caption_of(v)
    assert "FAKE" in text and "0.873" in text and "0.567" in text and "0.5" in text
    img = np.full((200, 300, 3), 255, np.uint8)
    save_overlay(tmp_path / "o.jpg", img, np.zeros((200, 300), np.float32), caption=text)
    got = np.asarray(Image.open(tmp_path / "o.jpg"))
    assert got.shape == (200, 300, 3) and got[:5, :40].mean() < 80  # the dark caption box, top-left
