"""`defaker data synth --photos`: edits of real photos that keep their history, documents with a
first save and recompressions; manifest provenance, exact masks, determinism, reserved packages."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")

from defaker_edge.data.synth import SynthConfig, synthesize  # noqa: E402
from defaker_edge.errors import DefakerError  # noqa: E402


def _corpus(root, package="kphotoalbum"):
    rng = np.random.default_rng(0)
    lines = []
    (root / "files").mkdir(parents=True)
    for i in range(3):
        yy, xx = np.mgrid[0:300, 0:400]
        img = np.stack([120 + 70 * np.sin(xx / (9 + i) + c) * np.cos(yy / 13) for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
        p = root / "files" / f"p{i}.jpg"
        Image.fromarray(img).save(p, "JPEG", quality=80 + 5 * i)
        lines.append({"path": f"files/p{i}.jpg", "package": package, "version": "1", "file": f"/usr/p{i}.jpg",
                      "license": "GPL-2+", "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "kind": "photo",
                      "format": "JPEG", "jpeg_quality": 80 + 5 * i, "split": "train"})
    rgba = np.zeros((60, 50, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[10:50, 10:40, 3] = 255
    Image.fromarray(rgba).save(root / "files" / "cut.png")
    lines.append({"path": "files/cut.png", "package": "tuxpaint-stamps-default", "file": "/usr/cut.png",
                  "license": "GPL-2", "kind": "cutout", "split": "train"})
    lines.append({"path": "files/p0.jpg", "package": "forensics-samples-files", "file": "/x.jpg",
                  "license": "CC", "kind": "photo", "split": "heldout"})  # never used for training
    (root / "photos.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    return root


def test_photo_forgeries_name_their_history_and_masks(tmp_path):
    photos = _corpus(tmp_path / "photos")
    res = synthesize(SynthConfig(out=tmp_path / "a", n=16, seed=3, domains=("natural", "document"),
                                 size_min=96, size_max=160, photos=str(photos), workers=1))
    lines = [json.loads(s) for s in res.manifest.read_text().splitlines()]
    assert {ln["domain"] for ln in lines} == {"natural", "document"}
    assert sum(ln["label"] for ln in lines) == 8
    for ln in lines:
        img = Image.open(tmp_path / "a" / ln["image"])
        assert ln["final"]["format"] in ("jpeg", "png", "webp")
        assert img.format.lower() == {"jpeg": "jpeg", "png": "png", "webp": "webp"}[ln["final"]["format"]]
        if ln["domain"] == "natural":
            assert ln["source"]["package"] == "kphotoalbum"  # the held-out photo never appears
            assert ln["source"]["first"]["format"] == "JPEG"
        else:
            assert ln["source"]["first"]["format"] == "jpeg" and isinstance(ln["source"]["intermediate"], list)
        if ln["label"]:
            m = np.asarray(Image.open(tmp_path / "a" / ln["mask"]))
            assert m.shape == img.size[::-1] and m.any() and ln["kind"] != "authentic"
        else:
            assert ln["mask"] is None and ln["kind"] == "authentic"
    again = synthesize(SynthConfig(out=tmp_path / "b", n=16, seed=3, domains=("natural", "document"),
                                   size_min=96, size_max=160, photos=str(photos), workers=1))
    assert again.manifest.read_bytes().replace(b"/b/", b"/a/") == res.manifest.read_bytes()
    for ln in lines:
        assert (tmp_path / "a" / ln["image"]).read_bytes() == (tmp_path / "b" / ln["image"]).read_bytes()


def test_local_recompression_leaves_a_foreign_grid(tmp_path):
    from defaker_edge.data.synth import photo

    rng = np.random.default_rng(0)
    img = photo.jpeg_round(np.clip(rng.normal(128, 30, (128, 128, 3)), 0, 255).astype(np.uint8), 90)
    before, after, info = photo.local_recompress(np.random.default_rng(4), img, None, None)
    assert info["quality"] < 96 and (after != before).any()


def test_reserved_packages_are_refused(tmp_path):
    photos = _corpus(tmp_path / "photos", package="mate-backgrounds")
    with pytest.raises(DefakerError, match="reserved"):
        synthesize(SynthConfig(out=tmp_path / "a", n=4, seed=0, domains=("natural",), size_min=96, size_max=128,
                               photos=str(photos), workers=1))
    with pytest.raises(DefakerError, match="photos.jsonl"):
        SynthConfig(out=tmp_path / "b", n=4, photos=str(tmp_path / "nowhere")).validate()


def test_merge_keeps_every_sample_and_split(tmp_path):
    from defaker_edge.cli import main
    from defaker_edge.data.dataset import load_dataset

    photos = _corpus(tmp_path / "photos")
    for name, doms in (("a", ("natural", "document")), ("b", ("face", "aigc"))):
        synthesize(SynthConfig(out=tmp_path / name, n=8, seed=1, domains=doms, size_min=96, size_max=128,
                               photos=str(photos), workers=1))
    out = tmp_path / "m" / "manifest.jsonl"
    assert main(["data", "merge", "--out", str(out), str(tmp_path / "a" / "manifest.jsonl"),
                 str(tmp_path / "b")]) == 0
    merged = load_dataset(out)
    assert len(merged) == 16 and {s.domain for s in merged} == {"natural", "document", "face", "aigc"}
    assert all((tmp_path / "m" / s.image).is_file() or __import__("os").path.isfile(s.image) for s in merged)
