"""A camera app's API: Verdict.save_mask / save_overlay, PIL images as input, the overlay's word on
an uncertain verdict, and `defaker package info|path|verify` on the installed package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defaker_edge.cli import main
from defaker_edge.errors import DefakerError, ImageError
from defaker_edge.runtime import DEFAULT_PACKAGE, Detector
from defaker_edge.runtime.overlay import caption_of

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import tiny_package, write_manifest  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def pkg(tmp_path) -> Path:
    return tiny_package(tmp_path / "pkg")


def _img(h=90, w=130, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_save_mask_writes_the_mask_as_an_8_bit_png(pkg, tmp_path):
    Image.fromarray(_img()).save(tmp_path / "in.png")
    with Detector.load(pkg) as det:
        v = det.check(tmp_path / "in.png")
    assert v.heatmap.dtype == np.float16  # what Image.fromarray refuses: the savers convert
    out = v.save_mask(tmp_path / "out" / "in.mask.png")
    im = Image.open(out)
    assert im.format == "PNG" and im.mode == "L" and im.size == (130, 90)
    assert np.array_equal(np.asarray(im), v.mask.astype(np.uint8) * 255)  # the decision: 255 or 0
    heat = Image.open(v.save_heatmap(tmp_path / "out" / "in.heatmap.png"))
    want = np.rint(v.heatmap.astype(np.float64) * 255).astype(np.uint8)
    assert heat.mode == "L" and np.array_equal(np.asarray(heat), want)
    assert not list((tmp_path / "out").glob("*.tmp"))  # written atomically


def test_save_overlay_rereads_the_file_and_needs_the_image_otherwise(pkg, tmp_path):
    arr = _img()
    Image.fromarray(arr).save(tmp_path / "in.png")
    with Detector.load(pkg) as det:
        v = det.check(tmp_path / "in.png")
        va = det.check(arr)
        vq = det.check(arr, mask="quarter")
    jpg = Image.open(v.save_overlay(tmp_path / "o.jpg"))
    assert jpg.format == "JPEG" and jpg.size == (130, 90)
    png = Image.open(v.save_overlay(tmp_path / "o.png"))
    assert png.format == "PNG" and png.size == (130, 90)
    # the caption box (black) is top-left; the rest of the picture is the image, tinted at most
    assert np.asarray(png)[:3, :20].max() < 60
    with pytest.raises(DefakerError, match="pass it again"):
        va.save_overlay(tmp_path / "a.jpg")
    assert Image.open(va.save_overlay(tmp_path / "a.jpg", image=arr)).size == (130, 90)
    with pytest.raises(DefakerError, match="not the image that was checked"):
        va.save_overlay(tmp_path / "b.jpg", image=_img(40, 40))
    with pytest.raises(DefakerError, match="no full-size mask"):
        vq.save_mask(tmp_path / "q.png")


def test_keep_pixels_draws_the_overlay_without_a_second_decode(pkg, tmp_path, monkeypatch):
    """check(keep_pixels=True) (what `defaker check --overlay` uses): the Verdict holds the decoded
    pixels and save_overlay draws on them; nothing reads the file again."""
    from defaker_edge.runtime import detector as detmod

    arr = _img()
    Image.fromarray(arr).save(tmp_path / "in.png")
    with Detector.load(pkg) as det:
        plain = det.check(tmp_path / "in.png")
        kept = det.check(tmp_path / "in.png", keep_pixels=True)
        many = list(det.check_many([tmp_path / "in.png", arr], keep_pixels=True))
    assert plain.pixels is None and np.array_equal(kept.pixels, arr)
    assert all(np.array_equal(v.pixels, arr) for v in many)
    assert kept.logit == plain.logit
    ref = np.asarray(Image.open(plain.save_overlay(tmp_path / "ref.png")))

    def no_decode(*a, **k):
        raise AssertionError("decoded a second time")

    monkeypatch.setattr(detmod, "pixels_of", no_decode)
    assert np.array_equal(np.asarray(Image.open(kept.save_overlay(tmp_path / "kept.png"))), ref)
    # an array checked with keep_pixels needs no image=... either
    assert Image.open(many[1].save_overlay(tmp_path / "arr.png")).size == (130, 90)


def test_pil_images_are_accepted(pkg, tmp_path):
    arr = _img()
    with Detector.load(pkg) as det:
        ref = det.check(arr)
        for im in (Image.fromarray(arr), Image.fromarray(arr).convert("RGBA"), Image.fromarray(arr).convert("P")):
            v = det.check(im)
            if im.mode == "P":  # palette quantization changes pixels: only the path is compared
                assert 0 <= v.fake_prob <= 1 and v.size == (90, 130)
            else:
                assert v.fake_prob == ref.fake_prob and v.image == "<PIL image>"
        Image.fromarray(arr).save(tmp_path / "x.png")
        lazy = Image.open(tmp_path / "x.png")  # not decoded yet: the Detector decodes it
        assert det.check(lazy).fake_prob == ref.fake_prob
        got = list(det.check_many([Image.fromarray(arr), arr]))
        assert [g.fake_prob for g in got] == [ref.fake_prob] * 2
        with pytest.raises(ImageError, match="over the"):
            det.check(Image.fromarray(arr), max_pixels=100)


def test_pil_jpeg_keeps_its_quantization_table_for_the_dct_stream():
    """The default package reads the file's JPEG table: an Image.open'ed JPEG answers as its path
    does, and a converted copy (no table) as the bare array does."""
    path = SAMPLES / "fake_splice_photo.jpg"
    with Detector.load() as det:
        assert det.package.dct is not None
        by_path = det.check(path, mask="none")
        by_pil = det.check(Image.open(path), mask="none")
        arr = np.asarray(Image.open(path).convert("RGB"))
        by_arr = det.check(arr, mask="none")
        by_copy = det.check(Image.open(path).convert("RGB"), mask="none")
    assert by_pil.fake_prob == by_path.fake_prob and by_copy.fake_prob == by_arr.fake_prob
    assert by_path.fake_prob != by_arr.fake_prob  # the table matters, so the comparison means something


def test_overlay_says_when_the_band_made_it_recheck_at_fp32(pkg, tmp_path):
    write_manifest(pkg, band=[0.0, 1.0])  # every probability is "unsure"
    with Detector.load(pkg) as det:
        v = det.check(_img())
    assert v.uncertain and v.precision == "fp32" and v.fallback.startswith("band: ")
    assert caption_of(v).splitlines()[1] == "uncertain, re-checked at FP32"
    v.save_overlay(tmp_path / "o.jpg", image=_img())
    write_manifest(pkg, band=[0.99, 1.0], threshold=0.995)
    with Detector.load(pkg) as det:
        v2 = det.check(_img())
    assert not v2.uncertain and "uncertain" not in caption_of(v2) and len(caption_of(v2).splitlines()) == 1


def test_package_info_path_and_verify_default_to_the_installed_package(capsys):
    assert main(["package", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(DEFAULT_PACKAGE)
    assert main(["package", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    m = json.loads((DEFAULT_PACKAGE / "manifest.json").read_text())
    assert info["path"] == str(DEFAULT_PACKAGE) and info["model_id"] == m["model_id"]
    assert info["thresholds"]["threshold"] == m["thresholds"]["threshold"]
    assert info["metrics"] == m["metrics"] and {f["precision"] for f in info["files"]} >= {"fp32", "int8-cpu"}
    assert main(["package", "info"]) == 0
    text = capsys.readouterr().out
    assert str(DEFAULT_PACKAGE) in text and f"{m['thresholds']['threshold']:.4f}" in text and "int8-cpu" in text
    assert main(["package", "verify", "--no-golden"]) == 0
    assert capsys.readouterr().out.startswith(f"{DEFAULT_PACKAGE}: OK")


ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_three_lines_save_a_mask_and_an_overlay(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = text.split("an overlay in three lines:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 3
    (tmp_path / "photo.jpg").write_bytes((SAMPLES / "fake_splice_photo.jpg").read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    size = Image.open("photo.jpg").size
    assert Image.open("photo.mask.png").mode == "L" and Image.open("photo.mask.png").size == size
    assert Image.open("photo.overlay.jpg").format == "JPEG" and Image.open("photo.overlay.jpg").size == size


@pytest.mark.parametrize("doc", ["README.md", "docs/INTERFACES.md", "docs/DESIGN.md", "bench/README.md", "MODEL_CARD.md"])
def test_docs_stand_alone(doc):
    """No pointer to a design document or tool outside the repository; every relative link resolves."""
    import re

    path = ROOT / doc
    text = path.read_text()
    assert "../shared" not in text and "/work/" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith(("http://", "https://")):
            assert (path.parent / target).resolve().is_file(), f"{doc}: link {target} does not resolve"
            assert ROOT in (path.parent / target).resolve().parents, f"{doc}: link {target} leaves the repository"
