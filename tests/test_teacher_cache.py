"""Teacher-target cache: shapes, resume after an interruption (nothing lost, nothing twice), shards, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from defaker_edge.data import load_dataset  # noqa: E402
from defaker_edge.errors import ArtifactError  # noqa: E402
from defaker_edge.teacher.cache import CacheConfig, TeacherCache, shard_from_env, write_cache  # noqa: E402
from defaker_edge.teacher.devdata import make_dev_data  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_teacher):
    return tiny_teacher


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dev_data(tmp_path_factory.mktemp("dev"), n=7, seed=3, size_range=(40, 72))


def test_cache_shapes_and_tiles(tiny, data, tmp_path):
    samples = load_dataset(data)
    c = write_cache(tiny, samples[:2], CacheConfig(out=str(tmp_path / "c"), tiles=32, overlap=8, chunk=5))
    assert len(c) == 2 and c.keys() == [s.key for s in samples[:2]]
    from PIL import Image

    for s in samples[:2]:
        e = c[s.key]
        w, h = Image.open(s.image).size
        assert e.soft_mask.dtype == np.float16 and e.soft_mask.shape == ((h + 3) // 4, (w + 3) // 4)
        assert 0.0 <= e.fake_prob <= 1.0 and 0.0 <= float(e.soft_mask.min()) <= float(e.soft_mask.max()) <= 1.0
        assert e.tiles and all(t.size == 32 and t.soft_mask.shape == (8, 8) for t in e.tiles)
        assert all(t.y0 + 32 <= max(h, 32) and t.x0 + 32 <= max(w, 32) for t in e.tiles)
        # the cached probability is the teacher's own
        from defaker_edge.data.io import load_image

        assert e.fake_prob == pytest.approx(tiny.predict(load_image(s.image)).fake_prob, abs=1e-6)


def test_resume_after_interruption(tiny, data, tmp_path):
    samples = load_dataset(data)
    cfg = CacheConfig(out=str(tmp_path / "c"), chunk=2)
    with pytest.raises(RuntimeError, match="simulated"):
        write_cache(tiny, samples, cfg, _fail_after=5)
    partial = TeacherCache(tmp_path / "c")
    assert len(partial) == 4  # two complete chunks; the third was never written
    assert not list((tmp_path / "c").glob(".*tmp"))
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "c").glob("part-*.npz")}
    c = write_cache(tiny, samples, cfg)
    after = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "c").glob("part-*.npz")}
    assert all(after[k] == v for k, v in before.items())  # finished chunks were not rewritten
    assert sorted(c.keys()) == sorted(s.key for s in samples)  # every key, exactly once (dupes raise)
    fresh = write_cache(tiny, samples, CacheConfig(out=str(tmp_path / "fresh"), chunk=2))
    for k in c.keys():
        assert c[k].fake_prob == fresh[k].fake_prob and np.array_equal(c[k].soft_mask, fresh[k].soft_mask)


def test_shards_cover_once_and_mixed_settings_rejected(tiny, data, tmp_path):
    samples = load_dataset(data)
    out = str(tmp_path / "c")
    for i in range(3):
        write_cache(tiny, samples, CacheConfig(out=out, chunk=2, shard=i, num_shards=3))
    assert sorted(TeacherCache(out).keys()) == sorted(s.key for s in samples)
    with pytest.raises(ArtifactError, match="other settings"):
        write_cache(tiny, samples, CacheConfig(out=out, chunk=2, shard=0, num_shards=2))


def test_shard_spec(monkeypatch):
    assert shard_from_env("1/4") == (1, 4)
    with pytest.raises(ArtifactError):
        shard_from_env("4/4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert shard_from_env(None) == (2, 5)


def test_cli_predict(data, tmp_path):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared CPU: oversubscribed threads crawl
    img = load_dataset(data)[1].image
    mask = tmp_path / "m.png"
    r = subprocess.run([sys.executable, "-m", "defaker_edge", "teacher", "predict", "--teacher", "tiny", img,
                        "--json", "--mask-out", str(mask)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    from PIL import Image

    assert 0 <= res["fake_prob"] <= 1 and Image.open(mask).size == Image.open(img).size
    r = subprocess.run([sys.executable, "-m", "defaker_edge", "teacher", "predict", "--teacher", "nope", img],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
