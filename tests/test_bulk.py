"""`defaker bulk` on a local Ray (2 CPUs, started once for the module): the samples plus hostile
files, one Parquet row per input, error rows for the bad ones, masks beside, resume that redoes nothing."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from defaker_edge.errors import DefakerError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=200 << 20)
    yield ray
    ray.shutdown()


def _inputs(d: Path) -> Path:
    src = d / "in"
    (src / "sub").mkdir(parents=True)
    for p in SAMPLES:
        shutil.copy(p, src / p.name)
    shutil.copy(SAMPLES[0], src / "sub" / SAMPLES[0].name)  # the same name in another folder
    (src / "truncated.jpg").write_bytes(SAMPLES[0].read_bytes()[:2000])
    (src / "text.jpg").write_text("this is not an image\n")
    (src / "empty.jpg").write_bytes(b"")
    (src / "old.mask.png").write_bytes(b"")  # named like an output: not an input
    (src / "locked").mkdir()
    return src


def _table(out: Path):
    import pyarrow.parquet as pq

    return pq.read_table(sorted(str(p) for p in out.glob("part-*.parquet"))).to_pylist()


def test_bulk_rows_errors_masks_and_resume(ray_local, tmp_path, monkeypatch):
    from defaker_edge.bulk import BulkConfig, run_bulk
    from defaker_edge.runtime import Detector

    src, out = _inputs(tmp_path), tmp_path / "out"
    real_scandir = os.scandir

    def scandir(path="."):  # the listing runs on the driver: an unreadable folder, as for a non-root user
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    cfg = BulkConfig(sources=[str(src)], out=str(out), masks=True, images_per_call=4, progress=False)
    res = run_bulk(cfg)
    rows = {r["image"]: r for r in _table(out)}
    good = {str(src / p.name) for p in SAMPLES} | {str(src / "sub" / SAMPLES[0].name)}
    bad = {str(src / n) for n in ("truncated.jpg", "text.jpg", "empty.jpg")} | {str(src / "locked")}
    assert set(rows) == good | bad and len(_table(out)) == len(rows)  # one row per input, no repeats
    assert res.checked == len(rows) and res.errors == len(bad) and res.skipped == 0 and res.actors == 1
    assert "empty file" in rows[str(src / "empty.jpg")]["error"]
    assert "not a supported image" in rows[str(src / "text.jpg")]["error"]
    assert "truncated" in rows[str(src / "truncated.jpg")]["error"]
    assert "Permission denied" in rows[str(src / "locked")]["error"]
    for i in good:
        r = rows[i]
        assert r["error"] is None and 0.0 <= r["fake_prob"] <= 1.0 and r["height"] > 0 and len(r["manifest_sha256"]) == 64
        assert Path(r["mask"]).is_file() and Path(r["mask"]).parent == out / "masks"
    assert len({rows[i]["mask"] for i in good}) == len(good)  # same file name in two folders: two masks
    with Detector.load(mask="none") as det:  # what a plain check answers for the same file
        v = det.check(str(src / SAMPLES[1].name))
    assert rows[str(src / SAMPLES[1].name)]["fake_prob"] == pytest.approx(v.fake_prob, abs=1e-6)
    assert rows[str(src / SAMPLES[1].name)]["precision"] == v.precision

    # resume: nothing is redone, no file written
    parts = sorted(out.glob("part-*.parquet"))
    again = run_bulk(cfg)
    assert again.checked == 0 and again.skipped == len(rows) and sorted(out.glob("part-*.parquet")) == parts
    # a new image is the only one checked; --retry-errors redoes the error rows (and only them)
    shutil.copy(SAMPLES[2], src / "new.jpg")
    assert run_bulk(cfg).checked == 1
    retry = run_bulk(BulkConfig(**{**cfg.__dict__, "retry_errors": True}))
    assert retry.checked == len(bad) and retry.errors == len(bad)


def test_bulk_cli_summary_and_exit_status(ray_local, tmp_path, capsys):
    from defaker_edge.cli import main

    out = tmp_path / "out"
    lst = tmp_path / "list.txt"
    lst.write_text(f"{SAMPLES[0]}\n{tmp_path / 'missing.jpg'}\n")
    rc = main(["bulk", f"@{lst}", "--out", str(out), "--json", "-q"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 3 and res["checked"] == 2 and res["errors"] == 1
    rows = {Path(r["image"]).name: r for r in _table(out)}
    assert "file not found" in rows["missing.jpg"]["error"] and rows[SAMPLES[0].name]["error"] is None


def test_plan_leaves_ray_data_a_cpu():
    from defaker_edge.bulk.config import BulkConfig
    from defaker_edge.bulk.run import _plan

    cfg = BulkConfig(sources=[], out="x")
    assert _plan(cfg, {"CPU": 2.0}) == (1, 1.0, 0.0, 2)  # one actor on both cores' threads
    assert _plan(cfg, {"CPU": 16.0})[:2] == (15, 1.0)
    actors, cpus, _, _ = _plan(BulkConfig(sources=[], out="x", actors=2), {"CPU": 2.0})
    assert actors == 2 and actors * cpus <= 1.5  # never every CPU: Ray Data's tasks would wait for ever
    assert _plan(BulkConfig(sources=[], out="x", gpus_per_actor=1), {"CPU": 8.0, "GPU": 4.0})[:3] == (4, 1.0, 1.0)
    with pytest.raises(DefakerError, match="has 0 GPU"):
        _plan(BulkConfig(sources=[], out="x", gpus_per_actor=1), {"CPU": 8.0})


def test_without_ray_one_line_names_the_extra(tmp_path, monkeypatch, capsys):
    from defaker_edge.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as on an install without it
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert main(["bulk", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip install '.[bulk]'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_does_not_import_ray():
    import subprocess

    code = ("import sys; from defaker_edge.cli import build_parser; build_parser(['--help']); "
            "build_parser(['bulk']); assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
