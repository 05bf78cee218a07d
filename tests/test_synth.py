"""Synthetic forgeries: determinism, exact masks, manifest contract, coverage, CLI errors."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from defaker_edge.cli import main
from defaker_edge.data import DOMAINS, load_image, load_mask, read_manifest
from defaker_edge.data.dataset import validate_samples
from defaker_edge.data.synth import SynthConfig, SynthConfigError, plan, synthesize
from defaker_edge.data.synth.core import render
from defaker_edge.data.synth.regions import changed

SMALL = dict(size_min=128, size_max=192)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_independent_of_workers(tmp_path):
    a = synthesize(SynthConfig(tmp_path / "a", n=8, seed=3, workers=1, **SMALL))
    b = synthesize(SynthConfig(tmp_path / "b", n=8, seed=3, workers=2, **SMALL))
    da, db = _tree_digest(a.out), _tree_digest(b.out)
    assert len(da) >= 8 + 4 + 2  # images, masks of the fakes, manifest.jsonl, manifest.json
    assert da == db
    c = synthesize(SynthConfig(tmp_path / "c", n=8, seed=4, workers=1, **SMALL))
    assert _tree_digest(c.out) != da


def test_tiny_data_manifest_contract(tiny_data, tiny_data_dir):
    samples = read_manifest(tiny_data)
    assert len(samples) == 24
    validate_samples(samples)  # raises if a mask's size differs from its image's
    assert {s.label for s in samples} == {0, 1}
    assert {s.domain for s in samples} == set(DOMAINS)
    assert Counter(s.split for s in samples) == {"train": 8, "val": 8, "test": 8}
    for s in samples:
        assert s.meta["source"]
        img = load_image(s.image)
        assert 256 <= min(img.shape[:2]) and max(img.shape[:2]) <= 384
        if s.label == 0:
            assert s.mask is None and s.kind == "authentic"
            continue
        m, was_binary = load_mask(s.mask, size=img.shape[:2])
        assert was_binary
        raw = np.unique(load_image(s.mask))
        assert set(raw.tolist()) <= {0, 255}
        if s.domain == "aigc":
            assert m.all() and s.kind == "generated"
        else:
            assert 0 < m.sum() < m.size, s.key
    assert json.loads((tiny_data_dir / "manifest.json").read_text())["format"] == "defaker-synth/1"


@pytest.mark.parametrize("domain", ["natural", "document", "face", "aigc"])
def test_masks_are_exactly_the_changed_pixels(tmp_path, domain):
    # lossless output, no final noise: the written image must equal the manipulated array, and
    # outside the mask it must equal the image the manipulation started from
    cfg = SynthConfig(tmp_path / domain, n=8, seed=11, domains=(domain,), jpeg_prob=0.0, noise_prob=0.0,
                      **SMALL)
    res = synthesize(cfg)
    fakes = [s for s in read_manifest(res.manifest) if s.label == 1]
    assert len(fakes) == 4
    for s in fakes:
        idx = s.meta["index"]
        r = render(cfg.seed, idx, cfg)
        written = load_image(s.image)
        np.testing.assert_array_equal(written, r.after)
        m, _ = load_mask(s.mask, size=written.shape[:2])
        if domain == "aigc":
            assert m.all()
        else:
            np.testing.assert_array_equal(m, changed(r.before, r.after))
            np.testing.assert_array_equal(written[~m], r.before[~m])
            assert m.any()


def test_forty_images_cover_five_kinds_and_vary_sizes(tmp_path):
    res = synthesize(SynthConfig(tmp_path / "d", n=40, seed=0, size_min=128, size_max=256))
    samples = read_manifest(res.manifest)
    kinds = {s.kind for s in samples if s.label == 1}
    assert len(kinds) >= 5, kinds
    shapes = {tuple(load_image(s.image).shape[:2]) for s in samples}
    assert any(h != w for h, w in shapes)
    assert all(128 <= min(sh) and max(sh) <= 256 for sh in shapes)
    assert res.counts["label"] == {"0": 20, "1": 20}


def test_plan_is_balanced_and_index_only():
    rows = [plan(i, DOMAINS) for i in range(160)]
    assert Counter(r[2] for r in rows) == {"train": 128, "val": 16, "test": 16}
    for split in ("train", "val", "test"):
        sub = [r for r in rows if r[2] == split]
        assert {(d, lab) for d, lab, _ in sub} == {(d, lab) for d in DOMAINS for lab in (0, 1)}
    assert rows == [plan(i, DOMAINS) for i in range(160)]


def test_config_errors():
    with pytest.raises(SynthConfigError, match="unknown domain"):
        SynthConfig("x", 4, domains=("natural", "cartoon")).validate()
    with pytest.raises(SynthConfigError, match="size_min"):
        SynthConfig("x", 4, size_min=500, size_max=300).validate()
    with pytest.raises(SynthConfigError, match="at least 1"):
        SynthConfig("x", 0).validate()


def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["data", "synth", "--out", str(out), "--n", "4", "--seed", "1", "--size-min", "128",
               "--size-max", "160", "--domains", "natural,document", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert res["n"] == 4 and Path(res["manifest"]).is_file()
    assert "images/s" in captured.err
    assert {s.domain for s in read_manifest(out / "manifest.jsonl")} == {"natural", "document"}
    # a second run into the same directory needs --overwrite
    rc = main(["data", "synth", "--out", str(out), "--n", "4", "--size-min", "128", "--size-max", "160"])
    assert rc == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["--domains", "natural,cartoon"], "unknown domain"),
    (["--size-min", "600", "--size-max", "300"], "size_min"),
    (["--n", "0"], "at least 1"),
])
def test_cli_bad_args_one_line_error(tmp_path, capsys, args, needle):
    base = ["data", "synth", "--out", str(tmp_path / "bad"), "--n", "2"]
    rc = main(base + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("defaker: error:") and needle in err
    assert not (tmp_path / "bad" / "manifest.jsonl").exists()
