"""LoRA pruning: the cubic schedule, exact slicing, importance that finds dead channels, the whole run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defaker_edge.distill.prune import PruneConfig, _Masks, cubic_ratio, prune
from defaker_edge.distill.slicing import slice_state
from defaker_edge.student import StudentConfig, build_student, export_onnx, load_student, save_student


@pytest.fixture(scope="module")
def manifest(tiny_data):
    return str(tiny_data)  # the shared tiny synthetic set (conftest)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_cubic_schedule():
    r = [cubic_ratio(k, 8, 0.5) for k in range(9)]
    assert r[0] == 0.0 and abs(r[-1] - 0.5) < 1e-12
    steps = np.diff(r)
    assert (steps > 0).all() and (np.diff(steps) < 0).all()  # fast first, gentle at the end


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)


@pytest.mark.parametrize("preset,tile", [("compact-s", 64), ("block-s", 64), ("pruned-teacher-tiny", 64)])
def test_slicing_equals_masking(preset, tile):
    """Removing channels/heads/blocks physically computes exactly what zero-masking them did."""
    cfg = StudentConfig.from_preset(preset, tile=tile)
    model = build_student(cfg).eval()
    _randomize_bn(model)
    spec = model.prune_spec()
    masks = _Masks(model, spec)
    g = torch.Generator().manual_seed(1)
    keep = {}
    for grp in spec.groups:
        n = max(grp.min_keep, grp.size // 2)
        idx = torch.randperm(grp.size, generator=g)[:n].sort().values
        masks.mask[grp.name].zero_()
        masks.mask[grp.name][idx] = 1.0
        keep[grp.name] = idx.tolist()
    dropped = {spec.blocks[0]}
    masks.gate[spec.blocks[0]] = 0.0
    x = torch.randn(2, 3, tile, tile, generator=g)
    with torch.no_grad():
        want = model(x)
    masks.remove()
    new_cfg = type(model).pruned_config(cfg, {k: len(v) for k, v in keep.items()}, dropped)
    small = build_student(new_cfg).eval()
    small.load_state_dict(slice_state(model.state_dict(), spec, keep, dropped), strict=True)
    with torch.no_grad():
        got = small(x)
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the tiny ViT's decoder and embeddings (unpruned) dominate it; the CNN is pruned everywhere
    frac = 0.6 if cfg.family == "compact" else 0.9
    assert sum(p.numel() for p in small.parameters()) < frac * sum(p.numel() for p in model.parameters())


def _student_dir(tmp_path, preset="compact-s", tile=128, dead: int = 0):
    cfg = StudentConfig.from_preset(preset, tile=tile)
    model = build_student(cfg)
    if dead:  # channels of block s1b0 that contribute nothing: the importance must find them
        blk = model.stages[1].blocks[0]
        with torch.no_grad():
            blk.expand[0].weight[:dead] = 0
            blk.proj[0].weight[:, :dead] = 0
    save_student(model, cfg, tmp_path / "student")
    return tmp_path / "student"


def test_lora_importance_prunes_dead_channels_first(manifest, tmp_path):
    src = _student_dir(tmp_path, dead=24)  # s1b0 has 48 expanded channels in compact-s
    res = prune(PruneConfig(student=str(src), data=manifest, out=str(tmp_path / "p"), ratio=0.5, steps=6,
                            batch=4, crop=64, lr=1e-3, events=2, drop_blocks=0, eval_max=0, threads=1))
    kept = res.report["prune"]["groups"]["s1b0"]["kept"]
    assert len(kept) == 24
    assert min(kept) >= 24, kept  # every dead channel went, every live one stayed


def test_prune_end_to_end_is_smaller_exports_and_needs_no_peft(manifest, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    src = _student_dir(tmp_path)
    out = tmp_path / "pruned"
    res = prune(PruneConfig(student=str(src), data=manifest, out=str(out), ratio=0.5, steps=8, batch=4, crop=64,
                            events=4, drop_blocks=1, eval_max=4, threads=1))
    p = res.report["prune"]
    assert p["params_cut"] >= 0.4 and p["flops_after"] < p["flops_before"]
    assert len(p["dropped_blocks"]) == 1
    assert [h["step"] for h in res.report["losses"]] == list(range(1, 9))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pruned"]["params_after"] == p["params_after"]
    model, scfg = load_student(out)
    assert not any("lora" in k for k in model.state_dict())
    assert sum(x.numel() for x in model.parameters()) == p["params_after"]
    path = export_onnx(model, scfg.tile, tmp_path / "p.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, scfg.tile, scfg.tile)
    lg, mk = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        rl, rm = model(x)
    np.testing.assert_allclose(lg, rl.numpy(), atol=1e-4, rtol=1e-3)
    assert mk.shape == (1, 1, scfg.tile // 4, scfg.tile // 4)
    assert "student" in res.report["val"] and "unpruned" in res.report["val"]


def test_cli_prune(manifest, tmp_path, capsys):
    from defaker_edge.cli import main

    src = _student_dir(tmp_path)
    rc = main(["prune", "--student", str(src), "--data", manifest, "--ratio", "0.5", "--steps", "4", "--batch", "4",
               "--crop", "64", "--eval-max", "0", "--threads", "1", "--out", str(tmp_path / "P"), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prune"]["params_cut"] >= 0.4
    assert main(["prune", "--student", str(src), "--data", manifest, "--ratio", "1.5", "--out", str(tmp_path / "Q")]) == 2


def test_prune_block_student_keeps_channel_counts_aligned(manifest, tmp_path):
    """The block arch prunes end to end; kept channel counts are multiples of 8 (INT8 kernels' packing)."""
    src = _student_dir(tmp_path, preset="block-s", tile=64)
    res = prune(PruneConfig(student=str(src), data=manifest, out=str(tmp_path / "p"), ratio=0.5, steps=4,
                            batch=4, crop=64, events=2, drop_blocks=0, eval_max=0, threads=1))
    model, scfg = load_student(tmp_path / "p")
    assert scfg.arch == "block"
    counts = [len(g["kept"]) for g in res.report["prune"]["groups"].values()]
    assert counts and all(c % 8 == 0 for c in counts), counts
    assert res.report["prune"]["params_cut"] > 0.3
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        lg, mk = model(x)
    assert mk.shape == (1, 1, 16, 16) and torch.isfinite(lg).all()


def test_prune_retention_compares_the_teachers_own_images(manifest, tmp_path):
    """The teacher's held-out metrics are carried over from the distill report (it is slow to score);
    when the pruning check uses more images than the teacher was scored on, retention is computed
    on the teacher's images only, not on a mix of two sample sizes."""
    from defaker_edge.distill.trainer import split_samples

    src = _student_dir(tmp_path)
    _, held, name = split_samples(manifest)
    assert len(held) >= 4
    teacher = {"threshold": 0.5, "per_domain": {},
               "overall": {"n": 2, "image_auc": 0.5, "pixel_f1": 0.25, "balanced_acc": 0.5}}
    (src / "report.json").write_text(json.dumps({"val": {"split": name, "teacher": teacher}}))
    res = prune(PruneConfig(student=str(src), data=manifest, out=str(tmp_path / "p"), ratio=0.5, steps=2, batch=4,
                            crop=64, events=1, drop_blocks=0, eval_max=4, threads=1))
    v = res.report["val"]
    assert v["student"]["overall"]["n"] == 4 and v["student_at_teacher_n"]["overall"]["n"] == 2
    from defaker_edge.distill.evaluate import retention

    want = retention(v["student_at_teacher_n"], {"overall": teacher["overall"]})
    for k, w in want.items():  # NaN where the random student's metric is undefined on two images
        got = v["retention"][k]
        assert (np.isnan(got) and np.isnan(w)) or got == pytest.approx(w), (k, got, w)


def test_prune_a_stream_student_from_a_student_teacher(manifest, tmp_path):
    """A student with the compression-history stream prunes end to end (its crops carry dct and qtable),
    distilled from a student-contract teacher on the same crops; the result still takes the stream."""
    src = _student_dir(tmp_path, preset="block-dct-s", tile=64)
    res = prune(PruneConfig(student=str(src), data=manifest, out=str(tmp_path / "p"), teacher=str(src), ratio=0.5,
                            steps=4, batch=4, crop=64, events=2, drop_blocks=0, eval_max=0, threads=1))
    assert {"kd", "mask_kd"} <= set(res.report["losses"][0])
    model, scfg = load_student(tmp_path / "p")
    assert scfg.dct_freqs == 8 and res.report["prune"]["params_cut"] > 0.3
    with torch.no_grad():
        lg, mk = model(torch.randn(2, 3, 64, 64), torch.randint(0, 11, (2, 8, 8, 8)).float(), torch.full((2, 64), 4.0))
    assert mk.shape == (2, 1, 16, 16) and torch.isfinite(lg).all()
