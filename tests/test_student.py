"""Students: contract shapes, ONNX export parity (ORT), save/load, FLOP counting, teacher-tower init."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from defaker_edge.errors import ArtifactError, DefakerError
from defaker_edge.student import PRESETS, StudentConfig, build_student, export_onnx, load_student, save_student
from defaker_edge.student.flops import count_flops

SMALL = [("compact-s", 128), ("block-s", 64), ("pruned-teacher-tiny", 64)]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("preset,tile", SMALL)
def test_contract_shapes(preset, tile):
    m = build_student(StudentConfig.from_preset(preset, tile=tile)).eval()
    logit, mask = m(torch.randn(3, 3, tile, tile))
    assert logit.shape == (3,)
    assert mask.shape == (3, 1, tile // 4, tile // 4)
    assert torch.isfinite(logit).all() and torch.isfinite(mask).all()


def test_all_presets_validate_and_unknown_preset_is_clear():
    for name in PRESETS:
        assert StudentConfig.from_preset(name).mask_stride == 4
    with pytest.raises(DefakerError, match="unknown student preset"):
        StudentConfig.from_preset("resnet-9000")
    with pytest.raises(DefakerError, match="divisible by 32"):
        StudentConfig.from_preset("compact", tile=500)


@pytest.mark.parametrize("preset,tile", SMALL)
def test_onnx_export_matches_torch(preset, tile, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = build_student(StudentConfig.from_preset(preset, tile=tile)).eval()
    path = export_onnx(m, tile, tmp_path / "s.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, tile, tile)
    with torch.no_grad():
        ref_l, ref_m = m(x)
    got_l, got_m = sess.run(["fake_logit", "mask_logits"], {"image": x.numpy()})
    assert got_l.shape == (2,) and got_m.shape == (2, 1, tile // 4, tile // 4)
    np.testing.assert_allclose(got_l, ref_l.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(got_m, ref_m.numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("preset,tile", SMALL)
def test_save_load_roundtrip(preset, tile, tmp_path):
    cfg = StudentConfig.from_preset(preset, tile=tile)
    m = build_student(cfg).eval()
    save_student(m, cfg, tmp_path / "s", report={"hello": 1})
    d = json.loads((tmp_path / "s" / "config.json").read_text())
    assert d["format"] == "defaker-student/1" and d["family"] == cfg.family and d["tile"] == tile
    assert d["mask_stride"] == 4 and len(d["mean"]) == 3
    m2, cfg2 = load_student(tmp_path / "s")
    assert cfg2 == cfg
    x = torch.randn(1, 3, tile, tile)
    with torch.no_grad():
        for a, b in zip(m(x), m2(x)):
            assert torch.equal(a, b)


def test_load_rejects_wrong_format_and_mismatched_weights(tmp_path):
    cfg = StudentConfig.from_preset("compact-s", tile=64)
    save_student(build_student(cfg), cfg, tmp_path / "s")
    p = tmp_path / "s" / "config.json"
    d = json.loads(p.read_text())
    d["widths"] = [8, 8, 8, 8]
    p.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="do not match"):
        load_student(tmp_path / "s")
    d["format"] = "something-else"
    p.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="format"):
        load_student(tmp_path / "s")
    with pytest.raises(ArtifactError, match="not a student checkpoint"):
        load_student(tmp_path / "nothing")


def test_flop_counter_on_a_hand_counted_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    f = count_flops(net, 16)
    want = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 9 + 8 * 16 * 16 * 10
    assert f["macs"] == want and f["flops"] == 2 * want
    assert f["params"] == sum(p.numel() for p in net.parameters())


def test_default_compact_budget():
    """The default must stay near 1 GFLOP (0.5 GMAC) per 512 tile to meet the CPU latency target."""
    f = count_flops(build_student(StudentConfig.from_preset("compact")), 512)
    assert f["flops"] <= 1.0e9, f
    assert 50_000 < f["params"] < 1_000_000


def test_pruned_teacher_loads_the_teachers_vision_tower(tmp_path):
    """A transformers InternVL vision tower (patch 14, 448) initialises a patch-16, 512 student, and the
    student's layers compute what transformers' layers compute."""
    from safetensors.torch import save_file
    from transformers import InternVLVisionConfig, InternVLVisionModel

    from defaker_edge.student.teacher_init import teacher_vision_dims

    hf_cfg = InternVLVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=[448, 448], patch_size=[14, 14])
    hf = InternVLVisionModel(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    d = tmp_path / "teacher"
    d.mkdir()
    save_file({f"model.vision_tower.{k}": v.contiguous() for k, v in hf.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"vision_config": {"hidden_size": 64, "num_attention_heads": 2}}))
    dims = teacher_vision_dims(d)
    assert dims == {"dim": 64, "layers": 2, "mlp": 128, "heads": 2}
    cfg = StudentConfig.from_preset("pruned-teacher-tiny", tile=512, dim=64, head_dim=32, heads=[2, 2], mlp=[128, 128],
                               init_from=str(d))
    m = build_student(cfg).eval()
    sd = m.state_dict()
    assert torch.equal(sd["encoder.layer.1.mlp.fc2.weight"], hf.state_dict()["encoder.layer.1.mlp.fc2.weight"])
    assert torch.equal(sd["embeddings.position_embeddings"], hf.state_dict()["embeddings.position_embeddings"])
    assert sd["embeddings.patch_embeddings.projection.weight"].shape[-1] == 16
    h = torch.randn(1, 5, 64)
    with torch.no_grad():
        ours = m.encoder.layer[0](h)
        theirs = hf.encoder.layer[0](h)
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_block_stem_high_pass_filters_ignore_flat_colour():
    """The first stem_hp filters are zero-sum: a flat block gives them nothing, whatever its colour."""
    cfg = StudentConfig.from_preset("block-s", tile=64)
    m = build_student(cfg).eval()
    w = m.stem.weight()[:, :3]  # the image's channels (the residual channels follow)
    n = cfg.stem_hp
    torch.testing.assert_close(w[:n].sum((1, 2, 3)), torch.zeros(n), atol=1e-6, rtol=0)
    assert w[n:].sum((1, 2, 3)).abs().min() > 1e-6  # the content filters are free
    flat = torch.full((1, 3, 64, 64), 0.7)
    resp = torch.nn.functional.conv2d(flat, w, stride=8)
    torch.testing.assert_close(resp[:, :n], torch.zeros_like(resp[:, :n]), atol=1e-5, rtol=0)
    # and the residual front sees nothing in a flat image either (inside; zero padding at the border)
    front = m.front.reference(flat)
    assert front.shape[1] == 12 and front[:, 3:, 1:-1, 1:-1].abs().max() < 1e-6


def test_residual_front_truncates_at_three_grey_levels():
    """A +-1 grey-level checkerboard passes the front unclipped; a hard edge saturates at +-1."""
    cfg = StudentConfig.from_preset("block-s", tile=64)
    m = build_student(cfg).eval()
    assert m.full_precision_layers() == ["front.conv"]
    grey = 1.0 / (255.0 * 0.226)
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    cb = (((yy + xx) % 2) * 2 - 1).float() * grey  # +-1 grey level
    r = m.front.reference(cb.expand(1, 3, 16, 16))[:, 3:, 2:-2, 2:-2]
    # KB on a checkerboard: |(-1*4 - 2*4 ... )| / 4 = 4 grey levels -> clipped; the 1-D filters give 2 -> 2/3
    assert r[:, 1::3].abs().max().item() == pytest.approx(2.0 / 3.0, rel=1e-4)
    assert r.abs().max().item() == pytest.approx(1.0, rel=1e-6)
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 2.0  # a step of ~115 grey levels
    assert m.front.reference(edge)[:, 3:].abs().max().item() == pytest.approx(1.0, rel=1e-6)


def test_fused_front_computes_the_concat_layout_without_a_concat(tmp_path):
    """The student runs the front end fused (one grouped conv emitting pass-through and residual
    channels, the stem's weight permuted to match): the same stem output as the concat layout
    [image, clip(residual)] it replaced, even for the brightest and darkest pixels, and in ONNX the
    image is read once, by a conv named for the front end's module (what quantize keeps FP32)."""
    import onnx

    from defaker_edge.student.block import _residual_kernels

    cfg = StudentConfig.from_preset("block-s", tile=64)
    torch.manual_seed(0)
    m = build_student(cfg).eval()
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    img = torch.rand(2, 3, 64, 64)
    img[0, :, :8] = 0.0  # the extremes a normalised image can reach: the pass-through must not clip
    img[0, :, 8:16] = 1.0
    x = (img - mean) / std
    fused = m.front(x)
    assert fused.shape[1] == 12 and fused.abs().max() <= 1.0
    # the layout it replaced, computed from scratch: [x, clip(grouped residual filters / (clip * grey))]
    k = _residual_kernels().repeat(3, 1, 1).unsqueeze(1) / (cfg.res_clip / (255.0 * 0.226))
    concat = torch.cat([x, torch.clamp(torch.nn.functional.conv2d(x, k, padding=1, groups=3), -1, 1)], 1)
    torch.testing.assert_close(m.front.reference(x), concat, atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        ref = torch.relu(m.stem.bn(torch.nn.functional.conv2d(concat, m.stem.weight(), None, 8)))
        torch.testing.assert_close(m.stem(fused, m.front.order()), ref, atol=1e-4, rtol=1e-4)
    path = export_onnx(m, 64, tmp_path / "m.onnx")
    g = onnx.load(str(path)).graph
    readers = [n for n in g.node if g.input[0].name in n.input]
    assert [n.op_type for n in readers] == ["Conv"] and readers[0].name.startswith("/front/conv/"), readers


def test_old_grouped_srm_checkpoint_loads_into_dense_srm():
    """Checkpoints from before the SRM conv became dense ([9,1,5,5], groups=3) load and agree."""
    from defaker_edge.student.compact import _srm_kernels

    cfg = StudentConfig.from_preset("compact-s", tile=64)
    m = build_student(cfg).eval()
    state = m.state_dict()
    state["srm.weight"] = _srm_kernels().repeat(3, 1, 1).unsqueeze(1)  # the old layout
    m2 = build_student(cfg).eval()
    m2.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    old = torch.nn.functional.conv2d(x, state["srm.weight"], stride=2, padding=2, groups=3)
    torch.testing.assert_close(m2.srm(x), old, atol=1e-5, rtol=1e-5)


def test_dense_residual_front_checkpoint_loads_into_grouped_conv():
    """Students saved while the front end's conv was dense ([9, 3, 3, 3]), or grouped without the
    pass-through ([9, 1, 3, 3], the shipped student), load and agree."""
    cfg = StudentConfig.from_preset("block-s", tile=64)
    m = build_student(cfg).eval()
    state = m.state_dict()
    g = state["front.conv.weight"][[k for k in range(12) if k % 4]]  # the 9 residual filters (fused: 4c+1..4c+3)
    dense = torch.zeros(9, 3, 3, 3)
    for o in range(9):
        dense[o, o // 3] = g[o, 0]
    state["front.conv.weight"] = dense
    m2 = build_student(cfg).eval()
    m2.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    ref = torch.clamp(torch.nn.functional.conv2d(x, dense, padding=1), -1, 1)
    torch.testing.assert_close(m2.front.reference(x)[:, 3:], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m2(x)[0], m(x)[0], atol=1e-5, rtol=1e-5)
    state["front.conv.weight"] = g.unsqueeze(1) if g.dim() == 3 else g  # [9, 1, 3, 3]
    m3 = build_student(cfg).eval()
    m3.load_state_dict(state)
    torch.testing.assert_close(m3(x)[1], m(x)[1], atol=1e-5, rtol=1e-5)
