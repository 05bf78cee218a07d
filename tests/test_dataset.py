"""Dataset readers: the JSONL manifest and paired folders, with every problem listed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from defaker_edge.data import load_dataset, read_manifest
from defaker_edge.data.dataset import validate_samples
from defaker_edge.errors import DatasetError


def _img(path, h=16, w=20, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def test_manifest_lists_every_offender(tmp_path):
    _img(tmp_path / "a.png")
    lines = [
        {"image": "a.png", "label": 0, "domain": "natural"},
        {"image": "missing1.png", "label": 1, "domain": "natural"},
        {"image": "a.png", "label": 3},
        {"image": "a.png", "label": 1, "domain": "space"},
        {"image": "a.png", "label": 1, "mask": "nomask.png"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    with pytest.raises(DatasetError) as e:
        read_manifest(tmp_path / "m.jsonl")
    msg = str(e.value)
    for needle in ("missing1.png", "label must be 0 or 1", "unknown domain 'space'", "nomask.png", "not JSON"):
        assert needle in msg
    assert "5 problem(s)" in msg


def test_mask_size_mismatch_and_non_binary(tmp_path, caplog):
    _img(tmp_path / "images/x.png", 16, 20)
    _img(tmp_path / "images/y.png", 16, 20)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks_x.png")
    soft = np.zeros((16, 20), np.uint8)
    soft[3:6, 3:6] = 180
    soft[0, 0] = 255
    Image.fromarray(soft).save(tmp_path / "masks_y.png")
    lines = [{"image": "images/x.png", "mask": "masks_x.png", "label": 1},
             {"image": "images/y.png", "mask": "masks_y.png", "label": 1}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    samples = read_manifest(tmp_path / "m.jsonl")
    with pytest.raises(DatasetError, match="mask is 10x10 but image x.png is 20x16"):
        validate_samples(samples)
    warns = validate_samples(samples[1:])
    assert len(warns) == 1 and "not binary" in warns[0]


def test_paired_folders(tmp_path):
    _img(tmp_path / "images/a.png")
    _img(tmp_path / "images/b.jpg")
    m = np.zeros((16, 20), np.uint8)
    m[2:5, 2:5] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(m).save(tmp_path / "masks/a.png")
    s = {x.key: x for x in load_dataset(tmp_path)}
    assert s["images/a.png"].label == 1 and s["images/a.png"].mask
    assert s["images/b.jpg"].label == 0 and s["images/b.jpg"].mask is None


def test_real_fake_folders(tmp_path):
    _img(tmp_path / "real/r.png")
    _img(tmp_path / "fake/f.png")
    samples = load_dataset(tmp_path, domain="document")
    assert sorted((x.key, x.label, x.domain) for x in samples) == [
        ("fake/f.png", 1, "document"), ("real/r.png", 0, "document")]
    with pytest.raises(DatasetError, match="expected images/"):
        load_dataset(tmp_path / "real")
