"""Teacher (tiny preset): predict shapes, yes/no probability math, InternVL tiling grids, info on meta."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from defaker_edge.teacher import load_teacher  # noqa: E402
from defaker_edge.teacher.config import ANSWER_WORDS, QUESTIONS, TeacherConfig  # noqa: E402
from defaker_edge.teacher.tiling import candidate_grids, choose_grid, dynamic_tiles  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_teacher):
    return tiny_teacher


def test_predict_shapes_and_range(tiny):
    img = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    out = tiny.predict(img)
    assert 0.0 <= out.fake_prob <= 1.0
    assert tuple(out.mask_logits.shape) == (150, 200)
    assert torch.isfinite(out.mask_logits).all()
    assert tuple(out.seg_embedding.shape) == (tiny.cfg.seg_dim,) == (256,)
    assert out.vision_features is None
    feats = tiny.predict(img, return_features=True).vision_features
    s = tiny.cfg.sam_image_size // 16
    assert tuple(feats.shape) == (256, s, s)


def test_predict_deterministic(tiny):
    img = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    a, b = tiny.predict(img), tiny.predict(img)
    assert a.fake_prob == b.fake_prob and torch.equal(a.mask_logits, b.mask_logits)


def test_answer_probability_math(tiny):
    """P(fake) is the softmax mass of Yes/Yeah/True/Sure within the eight answer words only."""
    vocab = len(tiny.tokenizer)
    logits = torch.full((vocab,), 50.0)  # huge logits elsewhere must not matter
    vals = torch.tensor([1.0, 0.5, -1.0, 0.0, 2.0, -0.5, 0.3, -2.0])
    logits[tiny.ids.answers] = vals
    p = tiny.answer_probs(logits)
    expect = torch.softmax(vals, 0)
    assert torch.allclose(p, expect)
    assert abs(float(p[:4].sum()) - float(expect[:4].sum())) < 1e-6
    words = [tiny.tokenizer.convert_ids_to_tokens(i) for i in tiny.ids.answers]
    assert tuple(words) == ANSWER_WORDS


def test_predict_uses_first_token_probability(tiny):
    """Drive the LM head to fixed logits: predict must report exactly the positive mass."""
    vocab = len(tiny.tokenizer)
    fixed = torch.zeros(vocab)
    fixed[tiny.ids.answers] = torch.tensor([3.0, 0, 0, 0, 1.0, 0, 0, 0])

    class Fixed(torch.nn.Module):
        def forward(self, h):
            return fixed.expand(*h.shape[:-1], vocab)

    old = tiny.vlm.lm_head
    tiny.vlm.lm_head = Fixed()  # (monkeypatch's undo does not restore nn.Module children reliably)
    try:
        out = tiny.predict(np.zeros((64, 64, 3), np.uint8))
        both = tiny.predict(np.zeros((64, 64, 3), np.uint8), question_mode="all")
    finally:
        tiny.vlm.lm_head = old
    e = np.exp([3.0, 0, 0, 0, 1.0, 0, 0, 0])
    assert out.fake_prob == pytest.approx(e[:4].sum() / e.sum(), abs=1e-6)
    assert both.fake_prob == pytest.approx(out.fake_prob, abs=1e-6)


def test_prompt_expansion(tiny):
    ids = tiny.prompt_ids(QUESTIONS[0], 3)
    assert ids.count(tiny.ids.img_context) == 3 * tiny.cfg.tokens_per_tile
    text = tiny.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>") and text.rstrip().endswith("assistant")
    assert "<img>" in text and "</img>" in text
    assert tiny.tokenizer.unk_token_id not in ids


@pytest.mark.parametrize("w,h,grid", [
    (800, 600, (4, 3)),     # exact 4:3 grid, 12 tiles
    (448, 448, (1, 1)),     # ties with 2x2, 3x3 lose: area is not > half of 2x2's
    (1000, 1000, (3, 3)),   # ties: 1e6 > 0.5*448^2*4 and > 0.5*448^2*9, not 4x4 (16 > 12)
    (896, 448, (2, 1)),     # 2:1
    (448, 1344, (1, 3)),    # 1:3 portrait
    (3000, 100, (12, 1)),   # extreme panorama: widest grid allowed
])
def test_dynamic_grid_choice(w, h, grid):
    assert choose_grid(w, h, 448, 1, 12) == grid


def test_candidate_grids_sorted_and_bounded():
    g = candidate_grids(1, 6)
    assert g[0] == (1, 1) and all(1 <= i * j <= 6 for i, j in g)
    assert [i * j for i, j in g] == sorted(i * j for i, j in g)


def test_dynamic_tiles_with_thumbnail():
    img = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    t = dynamic_tiles(img, 20, 1, 12)
    assert t.shape == (12 + 1, 20, 20, 3)  # 4x3 grid + thumbnail
    assert dynamic_tiles(img, 20, 1, 1).shape == (1, 20, 20, 3)  # one tile: no thumbnail


def test_presets_validate():
    for name in ("tiny", "reference", "defakerone-2b"):
        TeacherConfig.from_preset(name).validate()
    with pytest.raises(Exception, match="unknown teacher preset"):
        TeacherConfig.from_preset("nope")


def test_info_cli_json(capsys):
    from defaker_edge.cli import main

    """Built on the meta device: real sizes, no memory."""
    assert main(["teacher", "info", "--preset", "defakerone-2b", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 2.0e9 <= res["total_params"] <= 2.6e9
    assert res["params"]["vision_tower"] == pytest.approx(3.04e8, rel=0.02)  # InternViT-300M
    assert res["tokens_per_tile"] == 256


def test_train_smoke(tmp_path):
    """Two steps of the real training loop on a tiny set: loss is finite, the checkpoint reloads."""
    from defaker_edge.teacher.devdata import make_dev_data
    from defaker_edge.teacher.train import TrainConfig, train_teacher

    m = make_dev_data(tmp_path / "d", n=40, seed=0, size_range=(48, 80))
    res = train_teacher(TrainConfig(preset="tiny", data=str(m), out=str(tmp_path / "t"), steps=2, batch_size=4,
                                    threads=1, max_eval=4))
    assert res.steps == 2
    for k in ("image_auc", "pixel_f1", "pixel_f1_best", "pixel_iou", "per_domain", "split", "n"):
        assert k in res.metrics
    met = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert met["split"] == "test" and met["n"] == 4
    assert (tmp_path / "t" / "TRAINING.md").is_file()
    back = load_teacher(str(tmp_path / "t"))
    assert back.cfg.preset == "tiny"


def test_native_tile_mode_stitches(tiny, monkeypatch):
    """native_tile: the Sa2VA path per native tile; mask at full size, fake_prob = max over tiles."""
    from defaker_edge.runtime.tiling import TileSpec, cut_tiles, tile_origins

    img = np.random.default_rng(2).integers(0, 256, (100, 140, 3), dtype=np.uint8)
    monkeypatch.setattr(tiny.cfg, "native_tile", 64)
    monkeypatch.setattr(tiny.cfg, "native_overlap", 16)
    out = tiny.predict(img)
    assert tuple(out.mask_logits.shape) == (100, 140) and torch.isfinite(out.mask_logits).all()
    origins = tile_origins(100, 140, TileSpec(tile=64, overlap=16))
    per = [tiny._predict_whole(t, None, False) for t in cut_tiles(img, origins, 64)]
    assert out.fake_prob == pytest.approx(max(p.fake_prob for p in per), abs=1e-7)
    # a pixel only the first tile covers keeps that tile's logit
    assert float(out.mask_logits[0, 0]) == pytest.approx(float(per[0].mask_logits[0, 0]), abs=1e-5)
