"""scripts/device_train.sh, the one-call GPU training, on its CPU path with a tiny config: prepare the
carried photos, synthesize, resume the program, train, hand back state.tar + ledger lines, adopt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cv2")

from test_photo_synth import _corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_device_train_script_cpu_path(tmp_path, tiny_data):
    from defaker_edge.distill.trainer import DistillConfig, distill

    repo = tmp_path / "repo"  # a copy of what travels: the code, the script, a program state
    shutil.copytree(ROOT / "defaker_edge", repo / "defaker_edge", ignore=shutil.ignore_patterns("__pycache__", "models"))
    (repo / "scripts").mkdir()
    for script in ("device_train.sh", "fresh_seed.py"):
        shutil.copy(ROOT / "scripts" / script, repo / "scripts")
    init = distill(DistillConfig(data=str(tiny_data), out=str(tmp_path / "init"), student="block-s", steps=1,
                                 tile=128, crop=64, batch=2, eval_max=0, threads=1)).out
    env = {**os.environ, "PY": sys.executable, "PHOTOS": str(_corpus(tmp_path / "photos")), "MINUTES": "0.02",
           "N_PHOTO": "12", "N_PROC": "8", "BATCH": "2", "WORKERS": "1", "EXTRA": f"--init {init} --crop 64 --threads 1"}
    run = lambda *a: subprocess.run(["bash", "scripts/device_train.sh", *a], cwd=repo, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    assert run("prepare").returncode == 0 and (repo / "runs/device/photos/photos.jsonl").is_file()
    r = run("run")
    assert r.returncode == 0, r.stderr[-2000:]
    out = repo / "runs/device/out"
    lines = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
    assert lines and lines[-1]["step"] >= 1 and "heldout" not in lines[-1]  # held-out scoring stays here
    # adopt into a fresh checkout's models/: the state and the ledger lines arrive
    shutil.rmtree(repo / "models")
    (repo / "models").mkdir()
    (repo / "models/ledger.jsonl").write_text("")
    r = run("adopt", str(out))
    assert r.returncode == 0, r.stderr
    assert (repo / "models/program/optimizer.pt").is_file()
    assert [json.loads(x) for x in (repo / "models/ledger.jsonl").read_text().splitlines()] == lines
    bad = run("adopt", str(tmp_path))
    assert bad.returncode == 2 and "state.tar" in bad.stderr
