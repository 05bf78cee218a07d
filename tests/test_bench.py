"""`defaker bench` on a tiny package (tests/runtime_helpers.py) and a tiny hand-made dataset.

One bench run (few runs, a 128x128 timed image) is shared by most tests through a module fixture;
the checks recompute what they can from first principles (metrics on the runtime's own verdicts,
tile counts from the tiling) instead of trusting the bench.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import TILE, tiny_package, write_manifest  # noqa: E402

from defaker_edge.bench import SCHEMA_VERSION, BenchConfig, run_bench  # noqa: E402
from defaker_edge.errors import DefakerError  # noqa: E402

IMAGE = 128


def _write_data(root: Path, n: int = 10, seed: int = 0) -> Path:
    """Half real, half with a pasted noise square (mask = the square), two domains, odd sizes."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i in range(n):
        h, w = 72 + 8 * (i % 3), 100 + 4 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 2 + i) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
        label = i % 2
        rec = {"image": f"images/{i}.png", "label": label, "domain": "natural" if i < n // 2 else "document",
               "kind": "splice" if label else "authentic"}
        if label:
            m = np.zeros((h, w), np.uint8)
            m[10:40, 20:60] = 255
            img[10:40, 20:60] = rng.integers(0, 256, (30, 40, 3))
            Image.fromarray(m).save(root / "masks" / f"{i}.png")
            rec["mask"] = f"masks/{i}.png"
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        lines.append(json.dumps(rec))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    pkg = tiny_package(base / "pkg")
    # an FP8 file this machine cannot run: its row must say why instead of giving a number
    (pkg / "model_fp8.onnx").write_bytes(b"not an onnx model")
    write_manifest(pkg, extra_files=[{"path": "model_fp8.onnx", "sha256": "0" * 64, "bytes": 17,
                                      "precision": "fp8", "format": "onnx"}])
    data = _write_data(base / "data")
    cfg = BenchConfig(package=pkg, data=data, out=base / "R", runs=3, warmup=1, batches=(1, 2), image_size=IMAGE,
                      backends=["ort-cpu", "ort-cuda"], robustness=True,
                      robustness_levels={"jpeg": [90, 50], "resize": [0.5, 1.5]}, robustness_limit=8)
    rep = run_bench(cfg)
    return pkg, data, cfg, rep


def _row(rows, variant, backend=None):
    return next(r for r in rows if r["variant"] == variant and (backend is None or r.get("backend") == backend))


def test_files_and_schema(bench_run):
    _, _, cfg, rep = bench_run
    for name in ("report.json", "report.md", "pareto.png", "robustness.png"):
        assert (cfg.out / name).is_file(), name
    assert (cfg.out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((cfg.out / "report.json").read_text())
    assert r["format"] == "defaker-bench/1" and r["schema_version"] == SCHEMA_VERSION
    for key in ("created", "machine", "tools", "config", "package", "data", "latency", "accuracy", "robustness",
                "speedups", "targets"):
        assert key in r, key
    m = r["machine"]
    assert m["cpu_model"] and m["cpu_cores"] >= 1 and "CPUExecutionProvider" in m["onnxruntime_providers"]
    md = (cfg.out / "report.md").read_text()
    assert "| fp32 | ort-cpu | ok |" in md and "## Targets" in md


def test_latency_rows(bench_run):
    from defaker_edge.runtime.tiling import TileSpec, tile_origins

    pkg, _, cfg, rep = bench_run
    lat = rep.data["latency"]
    n_tiles = len(tile_origins(IMAGE, IMAGE, TileSpec(TILE, 16)))
    for v in ("fp32", "int8-cpu"):
        r = _row(lat, v, "ort-cpu")
        assert r["status"] == "ok", r.get("reason")
        assert r["per_image_via"] == "detector"
        pi, pt = r["per_image_ms"], r["per_tile_ms"]
        assert pi["n"] == cfg.runs and pt["n"] == cfg.runs
        assert 0 < pi["min"] <= pi["p50"] <= pi["p90"] <= pi["p99"] <= pi["max"]
        assert r["tiles_per_image"] == n_tiles
        assert set(r["throughput"]["by_batch"]) == {"1", "2"} and r["throughput"]["tiles_per_s"] > 0
        assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
        assert r["model_bytes"] == (pkg / r["file"]).stat().st_size
    # no GPU provider here: a row that says so, with no number
    cuda = _row(lat, "fp32", "ort-cuda")
    assert cuda["status"] == "skipped" and "CUDAExecutionProvider" in cuda["reason"] and "per_image_ms" not in cuda
    bad = _row(lat, "fp8", "ort-cpu")
    assert bad["status"] == "failed" and bad["reason"] and "per_image_ms" not in bad


def test_accuracy_matches_the_runtime(bench_run):
    """Recompute fp32 accuracy from the runtime's own verdicts with the metrics module."""
    from defaker_edge.data import load_dataset, load_mask
    from defaker_edge.metrics import Record, pixel_scores, summarize
    from defaker_edge.runtime import Detector

    pkg, data, _, rep = bench_run
    acc = rep.data["accuracy"]
    det = Detector.load(str(pkg), backend="onnxruntime", precision="fp32", providers=["CPUExecutionProvider"],
                        fallback="never", mask_dtype="float32")
    recs = []
    for s in load_dataset(data):
        v = det.check(s.image)
        pix = pixel_scores(v.heatmap, load_mask(s.mask)[0], threshold=v.pixel_threshold) if s.mask else None
        recs.append(Record(s.label, v.fake_prob, s.domain, pix))
    want = summarize(recs, det.package.thresholds.threshold)
    got = _row(acc, "fp32")["metrics"]
    for k in ("image_auc", "balanced_acc", "pixel_f1", "pixel_f1_best", "pixel_iou", "pixel_auc"):
        assert got["overall"][k] == pytest.approx(want["overall"][k]), k
    assert set(got["per_domain"]) == {"natural", "document"}
    f32 = _row(acc, "fp32")["agreement"]["vs_fp32"]
    assert f32["same_decision"] == 1.0 and f32["mean_abs_dprob"] == 0.0
    i8 = _row(acc, "int8-cpu")
    assert i8["status"] == "ok" and 0.0 <= i8["agreement"]["vs_fp32"]["same_decision"] <= 1.0
    assert _row(acc, "fp8")["status"] == "failed"


def test_robustness_rows(bench_run):
    _, _, _, rep = bench_run
    rb = rep.data["robustness"]
    assert rb["variants"] == ["fp32", "int8-cpu"]
    assert len(rb["rows"]) == 2 * 4
    keys = {(r["variant"], r["perturbation"], r["level"]) for r in rb["rows"]}
    assert ("int8-cpu", "resize", 1.5) in keys and ("fp32", "jpeg", 50) in keys
    assert rb["n_images"] == 8 and all(r["n"] == 8 for r in rb["rows"])  # --robustness-limit 8 of 10


def test_speedups_and_targets_from_rows(bench_run):
    _, _, cfg, rep = bench_run
    lat = rep.data["latency"]
    sp = {s["name"]: s for s in rep.data["speedups"]}
    s = sp["fp32_vs_int8-cpu_cpu"]
    want = _row(lat, "fp32", "ort-cpu")["per_image_ms"]["p50"] / _row(lat, "int8-cpu", "ort-cpu")["per_image_ms"]["p50"]
    assert s["ratio"] == pytest.approx(want)
    tile = sp["fp32_vs_int8-cpu_cpu_tile"]
    want_tile = _row(lat, "fp32", "ort-cpu")["per_tile_ms"]["p50"] / _row(lat, "int8-cpu", "ort-cpu")["per_tile_ms"]["p50"]
    assert tile["ratio"] == pytest.approx(want_tile) and "tile" in tile["basis"]
    t = {x["name"]: x for x in rep.data["targets"]}
    assert t["student INT8 vs the 2B teacher, per 1024x1024 image"]["passed"] is None  # no teacher timed
    # the INT8/FP32 targets take the timed-in-turns ratios, which this run measured
    pr = rep.data["paired"]
    assert pr["status"] == "ok" and pr["precisions"] == ["fp32", "int8-cpu"], pr.get("reason")
    for what in ("tile", "tile_batch", "image"):
        assert pr["variants"]["fp32"][f"ratio_{what}"] == 1.0  # each round's fp32/fp32
        assert pr["variants"]["int8-cpu"][f"per_{what}_ms"]["n"] == cfg.runs
    paired_tile = pr["variants"]["int8-cpu"]["ratio_tile"]
    paired_image = pr["variants"]["int8-cpu"]["ratio_image"]
    assert sp["fp32_vs_int8-cpu_cpu_tile_paired"]["ratio"] == paired_tile > 0
    tt = t["CPU INT8 vs FP32 (ONNX Runtime CPU), the same tiles"]
    assert tt["measured"] == paired_tile and tt["passed"] == (paired_tile >= 1.3) and "in turns" in tt["note"]
    ti = t["CPU INT8 vs FP32 (ONNX Runtime CPU), per 1024x1024 image end to end (verdict)"]
    assert ti["measured"] == paired_image and ti["passed"] == (paired_image >= 1.3)
    assert "timed in turns" in (cfg.out / "report.md").read_text()
    tb = t["CPU INT8 vs FP32 (ONNX Runtime CPU), the same tiles at the runtime's batch"]
    assert tb["measured"] == pr["variants"]["int8-cpu"]["ratio_tile_batch"] and pr["batch"] >= 1
    # every timed row says how much of the CPU other processes took meanwhile
    shares = [r["cpu_other_share"] for r in lat if r.get("kind") == "student" and r.get("status") == "ok"]
    assert shares and all(0.0 <= x <= 1.0 for x in shares) and 0.0 <= pr["cpu_other_share"] <= 1.0
    full = sp["fp32_vs_int8-cpu_cpu_full_mask"]
    f32, i8 = _row(lat, "fp32", "ort-cpu"), _row(lat, "int8-cpu", "ort-cpu")
    want_full = f32["per_image_full_mask_ms"]["p50"] / i8["per_image_full_mask_ms"]["p50"]
    assert full["ratio"] == pytest.approx(want_full) and "full-size mask" in full["basis"]
    assert f32["per_image_full_mask_ms"]["n"] == f32["per_image_ms"]["n"]  # timed as often as the verdict
    assert t["CPU INT8 vs FP32 (ONNX Runtime CPU), per 1024x1024 image with its full-size mask"]["passed"] == (
        want_full >= 1.3)
    size_t = next(x for x in rep.data["targets"] if x["unit"] == "ms")
    assert size_t["passed"] is None  # measured at 128x128: the 1024x1024 target is not claimed


def test_speedup_against_a_teacher_row():
    from defaker_edge.bench.report import speedups_and_targets

    def row(v, kind, p50, backend="ort-cpu"):
        return {"variant": v, "kind": kind, "backend": backend, "status": "ok", "per_image_ms": {"p50": p50},
                "per_image_full_mask_ms": {"p50": p50 + 20.0}, "per_tile_ms": {"p50": p50 / 10}}

    rep = {"latency": [row("teacher:defakerone-2b", "teacher", 120000.0, "torch"), row("fp32", "student", 300.0),
                       row("int8-cpu", "student", 100.0)],
           "config": {"image_size": 1024}, "machine": {"cpu_cores_usable": 2}}
    out = speedups_and_targets(rep, "int8-cpu")
    sp = {s["name"]: s["ratio"] for s in out["speedups"]}
    assert sp["teacher_vs_int8-cpu"] == pytest.approx(1200.0) and sp["fp32_vs_int8-cpu_cpu"] == pytest.approx(3.0)
    assert sp["fp32_vs_int8-cpu_cpu_tile"] == pytest.approx(3.0)
    assert sp["fp32_vs_int8-cpu_cpu_full_mask"] == pytest.approx(320.0 / 120.0)
    # no paired run: the batch target is not measured (no sequential row times a batch)
    assert [t["passed"] for t in out["targets"]] == [True, True, None, True, True, True]
    rep["latency"][2]["per_image_ms"]["p50"] = 250.0  # the model alone still 3x; end to end 1.2x, 250 ms
    rep["latency"][2]["per_image_full_mask_ms"]["p50"] = 270.0  # with the mask 320/270 = 1.19x
    assert [t["passed"] for t in speedups_and_targets(rep, "int8-cpu")["targets"]] == [
        True, True, None, False, False, False]
    rep["latency"][0] = {**rep["latency"][0], "status": "failed", "per_image_ms": None, "reason": "timed out"}
    t = speedups_and_targets(rep, "int8-cpu")
    assert t["targets"][0]["passed"] is None and "timed out" in t["speedups"][0]["reason"]
    # timed in turns, the model is only 1.1x faster per tile and 1.4x per image: that is what counts
    rep["paired"] = {"status": "ok", "reference": "fp32", "runs": 5, "backend": "ort-cpu",
                     "variants": {"fp32": {"ratio_tile": 1.0, "ratio_tile_batch": 1.0, "ratio_image": 1.0},
                                  "int8-cpu": {"ratio_tile": 1.1, "ratio_tile_batch": 1.5, "ratio_image": 1.4}}}
    t = speedups_and_targets(rep, "int8-cpu")
    assert [x["measured"] for x in t["targets"][1:4]] == [1.1, 1.5, 1.4]
    assert [x["passed"] for x in t["targets"][1:4]] == [False, True, True]
    # a failed paired run: the targets fall back to the rows, and the entry says why
    rep["paired"] = {"status": "failed", "reason": "worker crashed", "reference": "fp32", "variants": {}}
    t = speedups_and_targets(rep, "int8-cpu")
    assert t["targets"][1]["measured"] == pytest.approx(3.0) and "one after another" in t["targets"][1]["note"]
    assert "worker crashed" in t["targets"][1]["note"] and "worker crashed" in t["targets"][2]["note"]
    assert t["targets"][2]["measured"] is None  # the batch target has no sequential stand-in
    assert "worker crashed" in {s["name"]: s for s in t["speedups"]}["fp32_vs_int8-cpu_cpu_tile_paired"]["reason"]


def test_compare_with_itself_and_cli(bench_run, tmp_path, capsys):
    from defaker_edge.bench.compare import compare_reports
    from defaker_edge.cli import main

    pkg, data, cfg, rep = bench_run
    c = compare_reports(rep.data, rep.data)
    ok = [r for r in c["rows"] if r["p50_ms"] is not None]
    assert ok and all(r["p50_ratio"] == pytest.approx(1.0) and r["image_auc_delta"] == 0.0 for r in ok)
    # through the CLI: latency only (no --data), one variant, --compare against the fixture's report
    out = tmp_path / "R2"
    rc = main(["bench", "--package", str(pkg), "--out", str(out), "--runs", "2", "--warmup", "0",
               "--image-size", "64", "--precisions", "int8-cpu", "--batches", "1", "--no-plots",
               "--compare", str(cfg.out / "report.json"), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["compare"]["rows"][0]["variant"] == "int8-cpu"
    assert printed["accuracy"][0]["status"] == "skipped" and printed["data"] is None
    assert [r["variant"] for r in printed["latency"]] == ["int8-cpu"]
    assert printed["compare"]["warnings"] == ["one report has no accuracy data set"]


def test_compare_warns_when_the_data_sets_differ(bench_run):
    import copy

    from defaker_edge.bench.compare import compare_markdown, compare_reports, compare_text

    rep = bench_run[3].data
    assert rep["data"]["n"] > 0 and len(rep["data"]["sha256"]) == 64
    assert compare_reports(rep, rep)["warnings"] == []
    small = copy.deepcopy(rep)
    small["data"].update(n=7, sha256="f" * 64)
    c = compare_reports(rep, small)
    assert any("n=7 in the other report" in w for w in c["warnings"])
    assert any("manifest sha256" in w for w in c["warnings"])
    assert compare_text(c).startswith("WARNING: data sets differ") and "**Warning: data sets differ" in compare_markdown(c)


def test_plot_titles_carry_n(bench_run, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from defaker_edge.bench.plots import pareto_plot

    titles = []
    real = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t) or real(self, t, **kw))
    rep = bench_run[3].data
    pareto_plot(rep, tmp_path / "p.png")
    assert f"n={rep['data']['n']} images" in titles[0]


def test_progress_bars_only_on_a_terminal(capsys):
    from defaker_edge.bench.latency import progress

    assert list(progress(range(50), "x", mininterval=0)) == list(range(50))
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal: no bar drawn


def test_clear_errors(tmp_path, capsys):
    from defaker_edge.cli import main

    with pytest.raises(DefakerError, match="random-weights"):
        BenchConfig(package=tmp_path, out=tmp_path / "o", teacher_preset="defakerone-2b").validate()
    with pytest.raises(DefakerError, match="no config.json"):
        BenchConfig(package=tmp_path, out=tmp_path / "o", teacher=str(tmp_path)).validate()
    with pytest.raises(DefakerError, match="not a preset"):
        BenchConfig(package=tmp_path, out=tmp_path / "o", teacher="no-such-teacher").validate()
    with pytest.raises(DefakerError, match="teacher-runs"):
        BenchConfig(package=tmp_path, out=tmp_path / "o", teacher_runs=0).validate()
    assert main(["bench", "--package", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a package" in capsys.readouterr().err
    assert main(["bench", "--package", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--robustness-levels", "jpeg=500"]) == 2


def test_perturbations():
    from defaker_edge.bench.robustness import make_perturb, parse_levels

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    gt = np.zeros((40, 60), bool)
    gt[5:20, 10:30] = True
    out, m = make_perturb("resize", 1.5)(img, gt)
    assert out.shape == (60, 90, 3) and m.shape == (60, 90) and m.dtype == bool
    assert m.sum() == pytest.approx(gt.sum() * 2.25, rel=0.1)
    out, m = make_perturb("resize", 0.5)(img, gt)
    assert out.shape == (20, 30, 3) and m.shape == (20, 30)
    for kind, lv in (("jpeg", 50), ("blur", 7), ("noise", 15)):
        out, m = make_perturb(kind, lv)(img, gt)
        assert out.shape == img.shape and out.dtype == np.uint8 and m is gt
        assert not np.array_equal(out, img), kind
    a, _ = make_perturb("noise", 3, seed=1)(img, None)
    b, _ = make_perturb("noise", 3, seed=1)(img, None)
    assert np.array_equal(a, b)
    assert parse_levels("jpeg=90,50;blur=3") == {"jpeg": [90.0, 50.0], "blur": [3.0]}
    assert set(parse_levels(None)) == {"jpeg", "blur", "noise", "resize"}
    for bad in ("jpeg=0", "sharpen=3", "blur"):
        with pytest.raises(ValueError):
            parse_levels(bad)


def test_worker_failure_is_a_row(tmp_path):
    from defaker_edge.bench.latency import percentiles, run_job

    res = run_job({"kind": "onnx", "path": str(tmp_path / "missing.onnx"), "provider": "CPUExecutionProvider",
                   "tile": 64, "overlap": 16, "image_size": 64, "runs": 1, "warmup": 0}, timeout_s=120)
    assert res["status"] == "failed" and res["reason"]
    p = percentiles([3.0, 1.0, 2.0, 4.0])
    assert p["p50"] == 2.5 and p["min"] == 1.0 and p["max"] == 4.0 and p["n"] == 4


class _FakeTeacher:
    """Stands in for the teacher in-process (the real tiny one takes ~30 s to build on 2 cores)."""

    def predict(self, img):
        import torch
        from types import SimpleNamespace

        g = img.astype(np.float32).mean(axis=2) / 255.0
        return SimpleNamespace(fake_prob=float(g.std()), mask_logits=torch.from_numpy(4.0 * (g - 0.5)))


def test_teacher_paths_with_a_stand_in(bench_run, tmp_path, monkeypatch):
    from defaker_edge.bench import latency, teacher_adapter

    info = {"teacher_spec": "stand-in", "teacher_dtype": "fp32", "params": 1, "model_bytes": 4,
            "model_bytes_source": "parameters in memory", "weights": "checkpoint"}
    monkeypatch.setattr(teacher_adapter, "load_teacher_for_bench", lambda spec, **kw: (_FakeTeacher(), dict(info)))
    row = latency.measure_teacher({"spec": "x", "runs": 2, "warmup": 1, "image_size": 64})
    assert row["status"] == "ok" and row["per_image_ms"]["n"] == 2 and row["per_tile_ms"] is None
    assert row["params"] == 1 and row["peak_rss_mb"] > 0
    # in a bench run: the worker process cannot load this "teacher" dir (its row says why, no number),
    # while accuracy (in-process, patched) scores it and adds agreement to the student rows
    pkg, data, _, _ = bench_run
    tdir = tmp_path / "not-a-teacher"
    tdir.mkdir()
    (tdir / "config.json").write_text("{}")
    rep = run_bench(BenchConfig(package=pkg, data=data, out=tmp_path / "R", runs=2, warmup=0, batches=(1,),
                                image_size=64, precisions=["int8-cpu"], teacher=str(tdir), limit=4, plots=False,
                                teacher_timeout_s=300))
    t = rep.data["latency"][0]
    assert t["kind"] == "teacher" and t["status"] == "failed" and t["reason"] and "per_image_ms" not in t
    ta = rep.data["accuracy"][0]
    assert ta["variant"] == "teacher:not-a-teacher" and ta["status"] == "ok" and ta["headline"]["n"] == 4
    stu = _row(rep.data["accuracy"], "int8-cpu")
    assert 0.0 <= stu["agreement"]["vs_teacher"]["same_decision"] <= 1.0
    assert {s["name"]: s for s in rep.data["speedups"]}["teacher_vs_int8-cpu"]["ratio"] is None


@pytest.mark.slow
def test_teacher_dir_timed_and_scored(bench_run, tmp_path):
    """--teacher DIR: a latency row from its own process, an accuracy row, agreement on every student row."""
    from defaker_edge.teacher import TeacherConfig, build_teacher

    pkg, data, _, _ = bench_run
    tdir = tmp_path / "teacher"
    build_teacher(TeacherConfig.from_preset("tiny"), seed=0).save_pretrained(tdir)
    rep = run_bench(BenchConfig(package=pkg, data=data, out=tmp_path / "R", runs=2, warmup=0, batches=(1,),
                                image_size=64, precisions=["int8-cpu"], teacher=str(tdir), teacher_runs=1,
                                teacher_warmup=0, limit=4, plots=False))
    t = rep.data["latency"][0]
    assert t["kind"] == "teacher" and t["status"] == "ok", t.get("reason")
    assert t["runs"] == 1 and t["per_image_ms"]["n"] == 1 and t["params"] > 0 and t["weights"] == "checkpoint"
    ta = rep.data["accuracy"][0]
    assert ta["kind"] == "teacher" and ta["status"] == "ok" and ta["headline"]["n"] == 4
    stu = _row(rep.data["accuracy"], "int8-cpu")
    assert 0.0 <= stu["agreement"]["vs_teacher"]["same_decision"] <= 1.0
    sp = {s["name"]: s for s in rep.data["speedups"]}["teacher_vs_int8-cpu"]
    assert sp["ratio"] == pytest.approx(t["per_image_ms"]["p50"] / _row(rep.data["latency"], "int8-cpu")["per_image_ms"]["p50"])
    # the 2B target is only claimed against the real-size preset, never a small teacher
    assert rep.data["targets"][0]["passed"] is None


def _gpu_bench_smoke(tmp_path, *extra):
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_bench.py"
    r = subprocess.run([sys.executable, str(script), "--cpu-smoke", "--budget-s", "300", *extra], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert res["mode"] == "cpu-smoke" and res["parts"]
    for name, part in res["parts"].items():
        assert part["status"] in ("ok", "failed", "skipped"), name
        if part["status"] != "ok":
            assert part.get("reason"), name
    assert res["parts"]["student_fp32_eager"]["status"] == "ok"
    assert res["parts"]["student_fp32_eager"]["per_image_ms"]["n"] == 3
    assert res["parts"]["student_fp32_cudagraph"]["status"] == "skipped"
    assert "| part" in r.stdout.splitlines()[-len(res["parts"]) - 2]  # the table is printed last
    return res


def test_gpu_bench_cpu_smoke_fast(tmp_path):
    """bench/gpu_bench.py --cpu-smoke without the slow parts: the script's skeleton and student timing."""
    res = _gpu_bench_smoke(tmp_path, "--skip", "teacher,modelopt")
    assert res["parts"]["teacher"] == {"status": "skipped", "reason": "--skip"}
    assert res["parts"]["modelopt"] == {"status": "skipped", "reason": "--skip"}


@pytest.mark.slow
def test_gpu_bench_cpu_smoke_full(tmp_path):
    """Every part on tiny presets: the tiny teacher, ModelOpt INT8/FP8 fake quant with accuracy deltas."""
    res = _gpu_bench_smoke(tmp_path)
    assert res["parts"]["teacher"]["status"] == "ok" and res["parts"]["teacher"]["per_image_ms"]["n"] == 1
    mo = res["parts"]["modelopt"]
    assert mo["status"] in ("ok", "skipped")
    if mo["status"] == "ok":
        assert set(mo["variants"]) == {"int8", "fp8"}
    assert "teacher_vs_student_fp32_eager" in res["ratios"]


def test_cli_module_is_light():
    """`defaker --help` imports bench.cli: it must not pull numpy/torch/onnxruntime/matplotlib."""
    import subprocess

    code = ("import sys, defaker_edge.bench.cli; "
            "print([m for m in ('numpy', 'torch', 'onnxruntime', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_pareto_labels_of_coincident_points_are_stacked():
    """Variants at the same accuracy and nearly the same latency get distinct label offsets; a
    point far away keeps the default offset."""
    from defaker_edge.bench.plots import label_offsets

    offs = label_offsets([(120.0, 0.64), (150.0, 0.641), (105.0, 0.64), (200.0, 0.45), (2e5, 0.64)])
    assert len(set(offs[:3])) == 3
    assert offs[3] == offs[0] and offs[4] == offs[0]  # other accuracy; three decades away


def test_other_processes_cpu_share_and_the_shared_flag():
    """A busy process beside the timed one shows up in its row; the timed process's own threads do
    not (the load average counted the bench's own workers, and flagged every run as shared)."""
    import os
    import subprocess
    import sys
    import time

    from defaker_edge.bench.latency import cpu_seconds, other_cpu_share
    from defaker_edge.bench.report import shared_cpu

    t0 = cpu_seconds()
    if t0 is None:
        pytest.skip("no /proc/stat on this platform")
    end = time.perf_counter() + 0.6
    while time.perf_counter() < end:  # this process busy: not "other"
        pass
    own = other_cpu_share(t0)
    t0 = cpu_seconds()
    subprocess.run([sys.executable, "-c", "import time\nt=time.perf_counter()+0.6\nwhile time.perf_counter()<t: pass"],
                   check=True)
    other = other_cpu_share(t0)
    cores = os.cpu_count() or 1
    assert other > 0.5 / cores and other > own, (own, other)
    row = {"variant": "fp32", "kind": "student", "status": "ok", "backend": "ort-cpu"}
    rep = {"latency": [{**row, "cpu_other_share": 0.02}], "machine": {"load_avg_end": 9.0, "cpu_cores": 2}}
    assert shared_cpu(rep) is None  # measured shares win over a load average the bench itself raised
    rep["paired"] = {"status": "ok", "cpu_other_share": 0.4}
    assert "paired: other processes used 40%" in shared_cpu(rep)
    assert "load average 9.0" in shared_cpu({"latency": [row], "machine": {"load_avg_end": 9.0, "cpu_cores": 2}})
    # one variant on two backends: the busy CPU row is not hidden by the GPU row after it
    rep = {"latency": [{**row, "cpu_other_share": 0.5}, {**row, "backend": "ort-cuda", "cpu_other_share": 0.0}],
           "machine": {}}
    assert "fp32 (ort-cpu): other processes used 50%" in shared_cpu(rep)


def test_robustness_baseline_is_on_the_same_images(bench_run):
    _, _, _, rep = bench_run
    rb = rep.data["robustness"]
    assert [c["variant"] for c in rb["clean"]] == ["fp32", "int8-cpu"] and all(c["n"] == 8 for c in rb["clean"])


def test_forced_variants_are_marked_in_points_and_tables():
    from defaker_edge.bench.package import forced_precisions
    from defaker_edge.bench.plots import pareto_points

    report = {"package": {"files": [{"precision": "fp32", "forced": False}, {"precision": "fp8", "forced": True}]},
              "accuracy": [{"variant": v, "status": "ok", "headline": {"image_auc": 0.6, "pixel_f1": 0.2}}
                           for v in ("fp32", "fp8")],
              "latency": [{"variant": v, "backend": "ort-cpu", "status": "ok", "per_image_ms": {"p50": 10.0}}
                          for v in ("fp32", "fp8")]}
    assert forced_precisions(report) == {"fp8"}
    labels = {p["label"]: p["forced"] for p in pareto_points(report)}
    assert labels == {"fp32 / ort-cpu": False, "fp8 (forced: gate failed) / ort-cpu": True}


def test_band_share_is_counted_per_domain(tmp_path):
    """The accuracy rows count the images a deployed Detector would re-run at FP32, per domain."""
    from defaker_edge.bench.accuracy import evaluate
    from defaker_edge.bench.adapter import Prediction
    from defaker_edge.bench.report import _band
    from defaker_edge.data import load_dataset

    samples = load_dataset(_write_data(tmp_path / "d"))

    class Stub:  # in the band: images 0 and 1 (natural) and 7 (document)
        def check(self, img, source=None):
            i = int(Path(source).stem)
            return Prediction(0.5, np.zeros(img.shape[:2], np.float32), uncertain=i in (0, 1, 7))

    res = evaluate(Stub(), samples, 0.5, show_progress=False)
    assert res.band["natural"] == {"n": 5, "in_band": 2, "share": 0.4}
    assert res.band["document"] == {"n": 5, "in_band": 1, "share": 0.2}
    assert res.band["all"] == {"n": 10, "in_band": 3, "share": 0.3}
    row = {"variant": "int8-cpu", "band": res.band}
    assert _band(row, "all") == "3/10 (30.0%)" and _band(row, "face") == "—"
    assert _band({"variant": "fp32", "band": res.band}, "all") == "—"  # FP32 answers are never re-run


def test_report_shows_the_package_path_relative_to_the_checkout(tmp_path, monkeypatch):
    """A committed report names the package as a checkout does (defaker_edge/models/default), not by the
    benchmarking machine's absolute path; a package outside the working directory keeps its full path."""
    from defaker_edge.bench.package import _shown

    pkg = tmp_path / "work" / "defaker_edge" / "models" / "default"
    pkg.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert _shown(pkg) == str(Path("defaker_edge") / "models" / "default")
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert _shown(other) == str(other.resolve())
