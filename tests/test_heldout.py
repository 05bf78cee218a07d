"""The held-out generator on tiny synthetic "photos", and eval's per-kind section."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from defaker_edge.data.heldout import HeldoutConfig, HeldoutError, generate
from defaker_edge.data.heldout.natural import KINDS as NAT_KINDS


def _photo(seed: int, h: int, w: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * (1 + c) + y * (2 - c)) % 256 for c in range(3)], -1).astype(np.float64)
    a = a + rng.normal(0, 12, a.shape)  # texture, so every edit changes pixels
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=88)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    (d / "files").mkdir()
    lines = []
    for i, (split, h, w) in enumerate([("heldout", 560, 640), ("heldout", 600, 700), ("train", 600, 600)]):
        data = _photo(i, h, w)
        (d / "files" / f"p{i}.jpg").write_bytes(data)
        lines.append({"path": f"files/p{i}.jpg", "package": f"pkg{i}", "version": "1", "file": f"/p{i}.jpg",
                      "license": "CC0-1.0", "sha256": hashlib.sha256(data).hexdigest(), "kind": "photo",
                      "width": w, "height": h, "format": "JPEG", "jpeg_quality": 88, "exif_camera": None,
                      "split": split})
    (d / "photos.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


@pytest.fixture(scope="module")
def heldout(photos_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout")
    n = 2 * 2 * len(NAT_KINDS)  # every natural kind once, every document kind at least once
    res = generate(HeldoutConfig(photos=str(photos_dir), out=str(out), n=n, seed=3, progress=False))
    return out, res


def test_manifest_fields_and_masks(heldout):
    out, res = heldout
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == res["n"]
    assert {x["domain"] for x in lines} == {"natural", "document"}
    assert sum(x["label"] for x in lines) == len(lines) // 2
    assert {x["kind"] for x in lines if x["domain"] == "natural" and x["label"]} == set(NAT_KINDS)
    for x in lines:
        assert x["split"] == "test" and x["final_compression"] and x["first_compression"]
        im = Image.open(out / x["image"])
        assert im.format == x["final_compression"][-1]["format"]
        assert (im.width, im.height) == (x["width"], x["height"])
        if x["domain"] == "natural":
            # only held-out photos: pkg2 is the training split
            assert x["source"]["package"] in ("pkg0", "pkg1")
            assert x.get("donor", {"package": "pkg0"})["package"] in ("pkg0", "pkg1")
        if x["label"] == 0:
            assert x["kind"] == "authentic" and x["mask"] is None
        else:
            m = np.asarray(Image.open(out / x["mask"]))
            assert m.shape == (im.height, im.width) and set(np.unique(m)) <= {0, 255}
            assert (m > 0).sum() >= 24 and x["mask_frac"] == round(float((m > 0).mean()), 5)


def test_deterministic_for_a_seed(photos_dir, heldout, tmp_path):
    out, res = heldout
    again = tmp_path / "again"
    generate(HeldoutConfig(photos=str(photos_dir), out=str(again), n=res["n"], seed=3, progress=False))
    assert (again / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    for p in sorted((out / "images").iterdir()) + sorted((out / "masks").iterdir()):
        assert (again / p.parent.name / p.name).read_bytes() == p.read_bytes()
    other = tmp_path / "other"
    generate(HeldoutConfig(photos=str(photos_dir), out=str(other), n=4, seed=4, progress=False))
    assert (other / "manifest.jsonl").read_bytes() != (out / "manifest.jsonl").read_bytes()


def test_refusals(photos_dir, heldout, tmp_path):
    out, _ = heldout
    with pytest.raises(HeldoutError, match="overwrite"):
        generate(HeldoutConfig(photos=str(photos_dir), out=str(out), n=2, progress=False))
    with pytest.raises(HeldoutError, match="domains"):
        generate(HeldoutConfig(photos=str(photos_dir), out=str(tmp_path / "x"), n=2, domains=("face",),
                               progress=False))
    j = photos_dir / "photos.jsonl"
    rows = [json.loads(x) for x in j.read_text().splitlines()]
    rows[0]["package"] = "mate-backgrounds"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "photos.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    from defaker_edge.data.photos import ReservedPackageError
    with pytest.raises(ReservedPackageError):
        generate(HeldoutConfig(photos=str(bad), out=str(tmp_path / "y"), n=2, progress=False))


def test_eval_reports_per_kind(heldout, tmp_path):
    from defaker_edge.eval_cli import evaluate_predictions, markdown_table

    out, _ = heldout
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    preds = tmp_path / "preds.jsonl"
    # a perfect detector for splice only: its per-kind AUC is 1, copy-move's is 0.5 (ties)
    preds.write_text("".join(json.dumps({"image": x["image"], "mask": None,
                                         "fake_prob": 0.9 if x["kind"] == "splice" else 0.2}) + "\n"
                             for x in lines))
    rep = evaluate_predictions(preds, out / "manifest.jsonl")
    for k in ("image_auc", "balanced_acc", "pixel_f1", "pixel_f1_best", "pixel_iou"):
        assert k in rep["overall"] and k in rep["per_domain"]["natural"]
    nat = rep["per_kind"]["natural"]
    assert set(nat) == set(NAT_KINDS)
    n_real = rep["per_domain"]["natural"]["n_real"]
    assert nat["splice"]["image_auc"] == 1.0 and nat["splice"]["n_real"] == n_real
    assert nat["splice"]["n_fake"] == sum(1 for x in lines if x["kind"] == "splice")
    assert nat["copy_move"]["image_auc"] == 0.5 and nat["copy_move"]["balanced_acc"] == 0.5
    assert "doc_erase" in rep["per_kind"]["document"]
    md = markdown_table(rep)
    assert "| natural | splice |" in md and md.count("\n") == 2 + 1 + 2 + len(NAT_KINDS) + len(rep["per_kind"]["document"])
