"""Distillation: losses, grid-aligned tile sampling, the trainer (report, resume, DDP), the CLI."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch

from defaker_edge.distill.data import AugConfig, ImageStore, TileSampler
from defaker_edge.distill.fake import OracleTeacher
from defaker_edge.distill.losses import LossWeights, distill_loss, kd_prob, soft_dice
from defaker_edge.distill.targets import OnlineTeacherTargets, logits_to_soft_mask
from defaker_edge.distill.trainer import DistillConfig, distill, split_samples
from defaker_edge.data import load_dataset
from defaker_edge.student import load_student


@pytest.fixture(scope="module")
def manifest(tiny_data):
    return str(tiny_data)  # the shared tiny synthetic set (conftest)


@pytest.fixture(scope="module")
def teacher(manifest):
    return OracleTeacher(manifest)


def small_cfg(manifest, out, **kw):
    base = dict(data=manifest, out=str(out), student="compact-s", steps=6, tile=128, crop=64, batch=4,
                ckpt_every=3, eval_max=8, threads=1, seed=1)
    base.update(kw)
    return DistillConfig(**base)


def test_kd_is_smallest_at_the_teachers_probability():
    p = torch.tensor([0.8])
    logits = torch.linspace(-4, 4, 81)
    losses = torch.stack([kd_prob(l.view(1), p, 2.0) for l in logits]).view(-1)
    best = torch.sigmoid(logits[losses.argmin()])
    assert abs(float(best) - 0.8) < 0.05


def test_dice_and_missing_targets():
    t = torch.zeros(2, 1, 8, 8)
    t[:, :, 2:6, 2:6] = 1
    assert float(soft_dice(t * 20 - 10, t).max()) < 0.01
    assert float(soft_dice(-t * 20 + 10, t).min()) > 0.9
    batch = {"t_w": torch.zeros(2), "gt_label_w": torch.zeros(2), "gt_mask_w": torch.zeros(2),
             "t_prob": torch.zeros(2), "t_mask": t, "gt_label": torch.zeros(2), "gt_mask": t}
    total, parts = distill_loss(torch.zeros(2, requires_grad=True), torch.zeros(2, 1, 8, 8), batch, LossWeights())
    assert parts == {} and float(total.detach()) == 0.0
    batch["gt_mask_w"] = torch.ones(2)
    total, parts = distill_loss(torch.zeros(2), torch.zeros(2, 1, 8, 8), batch, LossWeights())
    assert set(parts) == {"gt_mask", "gt_dice", "gt_block"} and float(total) > 0


def test_soft_mask_is_mean_probability_per_4x4_cell():
    m = np.full((6, 9), -30.0, np.float32)
    m[:4, :4] = 30.0
    s = logits_to_soft_mask(m)
    assert s.shape == (2, 3) and s.dtype == np.float16
    assert float(s[0, 0]) == 1.0 and float(s[1, 2]) == 0.0


def test_sampler_is_grid_aligned_deterministic_and_rank_splittable(manifest, teacher):
    train, _, _ = split_samples(manifest)
    store = ImageStore(train, OnlineTeacherTargets(teacher))
    s = TileSampler(store, 64, seed=3, aug=AugConfig(p_jpeg=0.5, p_noise=0.5))
    rng = np.random.default_rng(0)
    for _ in range(50):
        gt = np.zeros((150, 170), bool)
        gt[100:110, 20:30] = True
        y, x = s._origin(rng, 150, 170, gt)
        assert y % 8 == 0 and x % 8 == 0 and y + 64 <= 150 and x + 64 <= 170
    s.aug.p_focus = 1.0
    for _ in range(20):
        y, x = s._origin(rng, 150, 170, gt)
        assert gt[y:y + 64, x:x + 64].any()  # a focused crop holds manipulated pixels
    s.aug.p_focus = 0.5
    a, b = s.batch(7, 0, 4), s.batch(7, 0, 4)
    halves = [s.batch(7, 0, 2), s.batch(7, 2, 2)]
    for k in a:
        assert torch.equal(a[k], b[k])
        assert torch.equal(a[k], torch.cat([h[k] for h in halves]))
    assert a["x"].shape == (4, 3, 64, 64) and a["t_mask"].shape == (4, 1, 16, 16)
    assert a["gt_mask"].shape == (4, 1, 16, 16)
    # tile labels agree with their masks: a fake tile holds manipulated pixels, a real one none
    many = s.batch(11, 0, 32)
    has = many["gt_mask"].flatten(1).amax(1) > 0
    lab = many["gt_label"] > 0.5
    assert bool((lab <= has).all())


def test_distill_writes_a_loadable_student_and_report(manifest, teacher, tmp_path):
    res = distill(small_cfg(manifest, tmp_path / "s"), teacher=teacher)
    for f in ("config.json", "model.safetensors", "report.json"):
        assert (tmp_path / "s" / f).is_file()
    rep = json.loads((tmp_path / "s" / "report.json").read_text())
    assert [h["step"] for h in rep["losses"]] == list(range(1, 7))
    assert all(np.isfinite(h["loss"]) for h in rep["losses"])
    assert rep["student"]["params"] > 0 and rep["student"]["flops"] == 2 * rep["student"]["macs"]
    for who in ("student", "teacher"):
        o = rep["val"][who]["overall"]
        assert set(("image_auc", "pixel_f1")) <= set(o)
    assert rep["val"]["teacher"]["overall"]["image_auc"] == 1.0  # the oracle separates the classes
    model, cfg = load_student(tmp_path / "s")
    assert cfg.tile == 128 and res.report["seed"] == 1
    assert rep["steps_run"] == 6 and rep["cpu_seconds"] > 0


def test_student_learns_from_teacher_and_ground_truth(manifest, teacher, tmp_path):
    """A few dozen steps already move the loss down on the tiny set (a learning smoke test)."""
    res = distill(small_cfg(manifest, tmp_path / "s", steps=40, batch=8, eval_max=0, lr=5e-3), teacher=teacher)
    L = [h["loss"] for h in res.report["losses"]]
    assert np.mean(L[-8:]) < 0.85 * np.mean(L[:8])


def test_resume_continues_bit_for_bit(manifest, teacher, tmp_path):
    full = distill(small_cfg(manifest, tmp_path / "a", eval_max=0), teacher=teacher)
    distill(small_cfg(manifest, tmp_path / "b", eval_max=0, stop_at=3), teacher=teacher)
    resumed = distill(small_cfg(manifest, tmp_path / "b", eval_max=0, resume=True), teacher=teacher)
    assert [h["loss"] for h in full.report["losses"]] == [h["loss"] for h in resumed.report["losses"]]
    ma, _ = load_student(tmp_path / "a")
    mb, _ = load_student(tmp_path / "b")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k


def test_distill_from_a_teacher_cache(manifest, teacher, tmp_path):
    """--cache: targets come from the teacher stage's TeacherCache, keyed by Sample.key."""
    cache_mod = pytest.importorskip("defaker_edge.teacher.cache")
    cache_mod.write_cache(teacher, load_dataset(manifest), cache_mod.CacheConfig(out=str(tmp_path / "cache")))
    res = distill(small_cfg(manifest, tmp_path / "s", cache=str(tmp_path / "cache"), steps=2))
    assert res.report["metrics"]["teacher"]["image_auc"] == 1.0
    assert "kd" in res.report["losses"][0] and "mask_kd" in res.report["losses"][0]


def test_feature_kd_uses_teacher_features(manifest, tmp_path):
    feat_teacher = OracleTeacher(manifest, features=16)
    w = LossWeights(feat=0.5)
    res = distill(small_cfg(manifest, tmp_path / "s", steps=2, eval_max=0, weights=w), teacher=feat_teacher)
    assert all("feat" in h for h in res.report["losses"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: DistillConfig, manifest: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distill(cfg, teacher=OracleTeacher(manifest))


def test_ddp_two_gloo_processes_follow_the_single_process_curve(manifest, teacher, tmp_path):
    import torch.multiprocessing as mp

    # a LayerNorm student: with BatchNorm, per-rank batch statistics would differ from the global batch's
    kw = dict(steps=5, batch=8, eval_max=0, ckpt_every=100, student="pruned-teacher-tiny", tile=64, crop=64)
    single = distill(small_cfg(manifest, tmp_path / "one", **kw), teacher=teacher)
    # one retry on a worker that died at exit: gloo's threads sometimes abort at interpreter teardown
    # ("terminate called without an active exception", seen once in ~10 CI runs, after the training
    # itself finished); a failure in training raises ProcessRaisedException and is not retried
    for attempt in range(2):
        two_dir = tmp_path / f"two-{attempt}"  # a fresh dir: the retry must not resume the first try
        try:
            mp.spawn(_ddp_worker, args=(2, _free_port(), small_cfg(manifest, two_dir, **kw), manifest),
                     nprocs=2, join=True)
            break
        except mp.ProcessExitedException:
            if attempt:
                raise
    two = json.loads((two_dir / "report.json").read_text())
    assert two["world_size"] == 2
    a = np.array([h["loss"] for h in single.report["losses"]])
    b = np.array([h["loss"] for h in two["losses"]])
    assert a.shape == b.shape == (5,)
    # same global batch, same tiles, globally normalised loss: the same curve up to float reordering
    np.testing.assert_allclose(a, b, rtol=1e-4)
    w1, _ = load_student(tmp_path / "one")
    w2, _ = load_student(two_dir)
    # compare what the models compute (a key bias has a zero true gradient, so Adam turns its
    # float noise into different values that change nothing downstream)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for o1, o2 in zip(w1(x), w2(x)):
            torch.testing.assert_close(o1, o2, atol=1e-4, rtol=1e-3)


def test_cli_errors_are_one_line(manifest, tmp_path, capsys):
    from defaker_edge.cli import main

    rc = main(["distill", "--cache", str(tmp_path / "none"), "--data", manifest, "--out", str(tmp_path / "o"),
               "--w", "bogus=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--w" in err and "Traceback" not in err
    rc = main(["distill", "--teacher", "tiny", "--data", manifest, "--out", str(tmp_path / "o"), "--batch", "3",
               "--crop", "100"])
    assert rc == 2 and "--crop" in capsys.readouterr().err


def test_cli_distill_with_the_tiny_teacher(manifest, tmp_path, capsys):
    """`defaker distill --teacher tiny ...` through the real CLI and the teacher stage (in-process)."""
    pytest.importorskip("defaker_edge.teacher")
    from defaker_edge import teacher as t
    from defaker_edge.cli import main

    if not hasattr(t, "load_teacher"):
        pytest.skip("teacher stage not built yet")
    out = tmp_path / "D"
    rc = main(["distill", "--teacher", "tiny", "--data", manifest, "--student", "compact-s", "--steps", "3",
               "--tile", "128", "--crop", "64", "--batch", "4", "--eval-max", "6", "--threads", "1",
               "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"student", "teacher"} <= set(summary["metrics"])
    rep = json.loads((out / "report.json").read_text())
    assert rep["metrics"]["teacher"]["n"] == 6 and rep["teacher"]["spec"] == "tiny"
    assert (out / "model.safetensors").is_file()


def test_init_warm_starts_from_a_student_dir(manifest, teacher, tmp_path):
    """--init takes the source's config (a block-s here, whatever --student says) and its weights."""
    distill(small_cfg(manifest, tmp_path / "a", student="block-s", steps=2, eval_max=0), teacher=teacher)
    src, src_cfg = load_student(tmp_path / "a")
    res = distill(small_cfg(manifest, tmp_path / "b", student="compact-s", init=str(tmp_path / "a"), steps=1,
                            lr=1e-12, eval_max=0), teacher=teacher)
    got, cfg = load_student(tmp_path / "b")
    assert cfg.arch == "block" and cfg.preset == "block-s" and res.report["recipe"]["init"] == str(tmp_path / "a")
    # one step at a negligible learning rate: the weights are the source's (BN statistics move)
    for (k, a), b in zip(src.state_dict().items(), got.state_dict().values()):
        if "running" in k or "num_batches" in k:
            continue
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)


def test_block_loss_weighs_edited_and_untouched_blocks_alike():
    from defaker_edge.distill.losses import block_balanced_bce

    gt = torch.zeros(2, 1, 16, 16)
    gt[0, :, :2, :2] = 1.0  # one edited 8x8 block (2x2 cells at 1/4) of 64
    right = (gt * 2 - 1) * 6  # logits that mark exactly the edit
    assert float(block_balanced_bce(right, gt).max()) < 0.01
    # all-negative logits: the untouched-pixel BCE of image 0 is tiny, but its block loss is not
    # (the one edited block counts half), which is what pulls a faint mask across 0
    neg = torch.full_like(gt, -6.0)
    loss = block_balanced_bce(neg, gt)
    assert float(loss[0]) > 2.5 and float(loss[1]) < 0.01


def test_table_dropout_keeps_pixels_and_drops_the_table(manifest):
    from defaker_edge.runtime.dct import NO_TABLE

    store = ImageStore(load_dataset(manifest), None)
    keep = TileSampler(store, 64, 0, AugConfig(p_drop_table=0.0, p_jpeg=1.0), dct=(4, 10))
    drop = TileSampler(store, 64, 0, AugConfig(p_drop_table=1.0, p_jpeg=1.0), dct=(4, 10))
    a, b = keep.item(0, 0), drop.item(0, 0)
    assert a["qtable"].any()  # p_jpeg=1: every crop is a JPEG with a table
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(b["qtable"], NO_TABLE)


def test_program_resumes_from_committed_state_and_keeps_a_ledger(manifest, tmp_path):
    from defaker_edge.distill.program import ProgramConfig, train_session
    from defaker_edge.distill.promotion import compare, format_table

    init = distill(small_cfg(manifest, tmp_path / "init", steps=2, eval_max=0, student="block-s")).out
    state, ledger = tmp_path / "models" / "program", tmp_path / "models" / "ledger.jsonl"

    def session(work):
        cfg = ProgramConfig(data=manifest, heldout=manifest, state=str(state), ledger=str(ledger), work=str(work),
                            init=str(init), minutes=0.04, ckpt_minutes=0.01, eval_minutes=100, eval_max=6,
                            batch=4, crop=64, threads=1)
        return train_session(cfg)

    first = session(tmp_path / "w1")
    lines = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert len(lines) >= 2 and lines == first.lines  # a line per checkpoint (time-based, and the last)
    assert "heldout" in lines[-1] and "heldout" not in lines[0]  # scored at the end (eval_minutes is long)
    assert lines[-1]["heldout"]["all"]["n"] == 6 and lines[-1]["cpu"] and lines[-1]["weights_sha256"]
    assert lines[-1]["examples"] == lines[-1]["step"] * 4
    from defaker_edge.artifacts import sha256_file

    assert lines[-1]["data_sha256"] == sha256_file(manifest)  # a line names the data it trained on
    assert (state / "optimizer.pt").is_file() and (state / "student" / "model.safetensors").is_file()
    # the baseline (the student the program started from) on the same images: compare pairs them
    from defaker_edge.distill.program import baseline_line

    base = baseline_line(str(init), manifest, 6, str(ledger), str(state))
    assert base["kind"] == "baseline" and base["heldout"]["all"]["n"] == 6
    assert json.loads((state / "baseline_scores.json").read_text())["student"] == str(init)
    pair = compare(str(state / "heldout_scores.json"), str(state / "baseline_scores.json"), reps=50)
    assert pair["slices"]["all"]["n"] == 6 and pair["candidate"]["step"] == lines[-1]["step"]
    snap = state / lines[-1]["snapshot"]  # the scored weights, kept in float16 for a snapshot ensemble
    from safetensors.torch import load_file

    w = load_file(str(snap))
    assert w and all(v.dtype == torch.float16 for k, v in w.items() if "num_batches" not in k)
    # a fresh clone: no scratch dir, only what git holds; the program continues from its step and CPU time
    second = session(tmp_path / "w2")
    assert second.lines[0]["step"] > lines[-1]["step"]
    assert second.lines[-1]["cpu_hours"] >= lines[-1]["cpu_hours"]
    # `train eval` scores the committed state (after a GPU call that could not): a ledger line of its own
    from defaker_edge.distill.program import eval_state

    ev = eval_state(str(state), manifest, 5, str(ledger))
    assert ev["kind"] == "eval" and ev["step"] == second.lines[-1]["step"] and ev["heldout"]["all"]["n"] == 5
    assert json.loads(ledger.read_text().splitlines()[-1]) == ev and (state / ev["snapshot"]).is_file()
    # the learning curve reads checkpoint and eval lines; other kinds (a teacher candidate) are left out
    from defaker_edge.distill.promotion import plot_ledger

    with open(ledger, "a") as fh:
        fh.write(json.dumps({"kind": "teacher_candidate", "heldout": ev["heldout"]}) + "\n")
    n_runs = sum(1 for x in ledger.read_text().splitlines() if json.loads(x).get("kind") in (None, "eval"))
    msg = plot_ledger(str(ledger), str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000 and f"{n_runs} checkpoints" in msg
    assert "0 training-set changes" in msg  # both sessions trained on the same manifest
    # a session on other data (a fresh set of forgeries) is marked where it starts
    with open(ledger, "a") as fh:
        fh.write(json.dumps({**second.lines[-1], "data_sha256": "0" * 64, "cpu_hours": 9.0}) + "\n")
    assert "1 training-set changes" in plot_ledger(str(ledger), str(tmp_path / "curve.png"))
    # the comparison of the last held-out scores with themselves is no gain, so no promotion
    res = compare(str(state / "heldout_scores.json"), str(state / "heldout_scores.json"), reps=50)
    assert res["promote"] is False and res["slices"]["all"]["auc_delta"]["value"] == 0.0
    assert "do not promote" in format_table(res)


def test_batch_workers_do_not_change_the_run(manifest, tmp_path):
    a = distill(small_cfg(manifest, tmp_path / "a", eval_max=0, steps=4))
    b = distill(small_cfg(manifest, tmp_path / "b", eval_max=0, steps=4, workers=2))
    assert [h["loss"] for h in a.report["losses"]] == [h["loss"] for h in b.report["losses"]]


def test_sigterm_ends_a_session_like_its_budget(manifest, tmp_path):
    """A hard stop coming (SIGTERM): the session checkpoints, scores the held-out set, logs, exits 0."""
    import signal
    import subprocess
    import sys
    import time

    init = distill(small_cfg(manifest, tmp_path / "init", steps=1, eval_max=0, student="block-s")).out
    ledger = tmp_path / "ledger.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "defaker_edge", "train", "run", "--data", manifest, "--heldout", manifest,
                          "--minutes", "30", "--eval-max", "4", "--state", str(tmp_path / "state"), "--ledger",
                          str(ledger), "--work", str(tmp_path / "work"), "--init", str(init), "--batch", "2",
                          "--crop", "64", "--threads", "1"], stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # imports, decoding, a few steps
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-1500:]
    assert "stopping after this step" in err
    last = json.loads(ledger.read_text().splitlines()[-1])
    assert last["step"] >= 1 and last["heldout"]["all"]["n"] == 4


def test_snapshot_ensemble_is_the_mean_and_its_mirror_is_exact(tmp_path):
    """The stand-in teacher: the members' mean; a mirrored tile's stream is the stream mirrored, so the
    flip member equals running the student on the mirrored tile with its own stream."""
    from safetensors.torch import save_file

    from defaker_edge.distill.ensemble import SnapshotEnsemble, build_ensemble
    from defaker_edge.runtime.dct import dct_stream, read_qtable
    from defaker_edge.student import StudentConfig, build_student, save_student
    from defaker_edge.student.inputs import dct_spec

    cfg = StudentConfig.from_preset("block-dct-s", tile=64)
    torch.manual_seed(0)
    a, b = build_student(cfg).eval(), build_student(cfg).eval()
    save_student(a, cfg, tmp_path / "student")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in b.state_dict().items()},
              str(tmp_path / "snap.safetensors"))
    ens = build_ensemble([str(tmp_path / "student"), str(tmp_path / "snap.safetensors")], flip=False,
                         config_dir=str(tmp_path / "student"))
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(tile[0]).save(buf, "JPEG", quality=80)
    tile = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))[None]
    q = read_qtable(buf.getvalue())[None]
    f, c = dct_spec(a)

    def inputs(t):
        from defaker_edge.runtime.tiling import normalize

        return (torch.from_numpy(normalize(t)), torch.from_numpy(dct_stream(t, q, f, c)), torch.from_numpy(q))

    with torch.no_grad():
        la, ma = a(*inputs(tile))
        lb, mb = b(*inputs(tile))
        le, me = ens(*inputs(tile))
        assert torch.allclose(le, (la + lb) / 2, atol=1e-3) and torch.allclose(me, (ma + mb) / 2, atol=1e-3)
        # the mirror: the ensemble's flip of the precomputed stream == the student on the mirrored tile
        one = SnapshotEnsemble([a], flip=True).eval()
        lo, mo = one(*inputs(tile))
        lf, mf = a(*inputs(np.ascontiguousarray(tile[:, :, ::-1])))
        assert torch.allclose(lo, (la + lf) / 2, atol=1e-5)
        assert torch.allclose(mo, (ma + mf.flip(-1)) / 2, atol=1e-5)


def test_a_student_dir_is_a_teacher_on_the_same_crops(manifest, tmp_path):
    """The stand-in teacher (a student checkpoint, stream included) runs on each batch's crops: its
    sigmoid outputs are the batch's KD targets, and distillation trains against them (kd terms)."""
    import torch

    from defaker_edge.distill.data import ImageStore, TileSampler
    from defaker_edge.distill.targets import CropTeacher, is_student_dir
    from defaker_edge.distill.trainer import split_samples
    from defaker_edge.student import StudentConfig, build_student, save_student
    from defaker_edge.student.inputs import dct_spec

    torch.manual_seed(3)
    cfg = StudentConfig.from_preset("block-dct-s", tile=64)
    tmodel = build_student(cfg).eval()
    save_student(tmodel, cfg, tmp_path / "t")
    assert is_student_dir(str(tmp_path / "t")) and not is_student_dir(str(tmp_path))
    ct = CropTeacher.load(str(tmp_path / "t"))
    train, _, _ = split_samples(manifest)
    b = TileSampler(ImageStore(train, None), 64, 0, dct=dct_spec(tmodel)).batch(0, 0, 4)
    b = {k: torch.as_tensor(v) for k, v in b.items()}
    ct.fill(b)
    with torch.no_grad():
        tl, tm = tmodel(b["x"], b["dct"], b["qtable"])
    assert torch.allclose(b["t_prob"], torch.sigmoid(tl)) and torch.allclose(b["t_mask"], torch.sigmoid(tm))
    assert b["t_w"].tolist() == [1.0] * 4
    res = distill(small_cfg(manifest, tmp_path / "s", student="block-dct-s", tile=64, eval_max=0,
                            teacher=str(tmp_path / "t")))
    parts = res.report["losses"][0]
    assert {"kd", "mask_kd"} <= set(parts), parts
    assert res.report["teacher"]["spec"] == str(tmp_path / "t")


def test_a_cpu_budget_ends_the_run_and_is_reported(manifest, tmp_path):
    """--cpu-minutes: training stops once the process has spent that much CPU (not wall) time."""
    res = distill(small_cfg(manifest, tmp_path / "s", steps=10_000, eval_max=0, cpu_minutes=0.03))
    rep = res.report
    assert 0 < rep["steps_run"] < 10_000
    assert 1.8 <= rep["cpu_seconds"] < 30  # the budget (1.8 s) plus at most the last step
