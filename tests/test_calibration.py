"""Calibration sets (build + reader) and threshold calibration (temperature, FPR threshold, band)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from defaker_edge.calibration import (CalibConfig, ThresholdConfig, build_calibration, calibrate_thresholds,
                                      fit_temperature, load_calibration, threshold_at_fpr)
from defaker_edge.errors import ArtifactError, DatasetError, DefakerError

from quant_helpers import ToyDetector, make_toy_data

T = 128


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def calib(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib") / "C"
    return build_calibration(CalibConfig(data=str(toy), out=str(out), per_domain=4, tile=T, seed=3))


def test_build_is_stratified_native_and_on_grid(calib, toy):
    from defaker_edge.data.io import load_image

    cs = load_calibration(calib.out)
    man = cs.manifest
    assert man["format"] == "defaker-calib/1" and man["n"] == len(cs) == 16 and man["tile"] == T
    # 4 domains x (2 real + 2 fake), drawn from the train split only
    for dom in ("natural", "document", "face", "aigc"):
        assert man["counts"][dom] == {"real": 2, "fake": 2, "total": 4}
    assert cs.tiles.shape == (16, T, T, 3) and cs.tiles.dtype == np.uint8
    assert cs.masks.shape == (16, T, T) and set(np.unique(cs.masks)) <= {0, 1}
    root = toy.parent
    by_key = {json.loads(l)["image"]: json.loads(l) for l in toy.read_text().splitlines()}
    for i in range(len(cs)):
        src = man["sources"][cs.source_index[i]]
        assert by_key[src["image"]]["split"] == "train"
        img = load_image(root / src["image"])
        y, x = cs.origins[i]
        crop = img[y:y + T, x:x + T]
        # native resolution: the tile is the image's own pixels (padding only beyond its border)
        assert np.array_equal(cs.tiles[i, :crop.shape[0], :crop.shape[1]], crop)
        assert y % 8 == 0 or y + T == img.shape[0]
        assert x % 8 == 0 or x + T == img.shape[1]
        assert len(src["sha256"]) == 64
    # fake tiles are chosen where the manipulation is
    assert all(cs.masks[i].sum() > 0 for i in range(len(cs)) if cs.labels[i] == 1)
    assert all(cs.masks[i].sum() == 0 for i in range(len(cs)) if cs.labels[i] == 0)
    b = next(cs.batches(5))
    assert b.shape == (5, 3, T, T) and b.dtype == np.float32


def test_build_is_deterministic_and_seeded(calib, toy, tmp_path):
    again = build_calibration(CalibConfig(data=str(toy), out=str(tmp_path / "a"), per_domain=4, tile=T, seed=3))
    other = build_calibration(CalibConfig(data=str(toy), out=str(tmp_path / "b"), per_domain=4, tile=T, seed=4))
    assert again.sha256 == calib.sha256
    assert other.sha256 != calib.sha256


def test_build_warns_on_missing_and_underfilled_domains(toy, tmp_path):
    lines = [l for l in toy.read_text().splitlines() if json.loads(l)["domain"] != "face"]
    man = toy.parent / "no_face.jsonl"
    man.write_text("\n".join(lines) + "\n")
    res = build_calibration(CalibConfig(data=str(man), out=str(tmp_path / "c"), per_domain=40, tile=T))
    text = " ".join(res.warnings)
    assert "'face' is missing" in text
    assert "'natural' is under-filled" in text
    assert "face" not in res.counts


def test_reader_detects_a_changed_shard(calib, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(calib.out, dst)
    shard = sorted(dst.glob("calib-*.npz"))[0]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_calibration(dst)


def test_build_rejects_bad_input(toy, tmp_path):
    with pytest.raises(DatasetError):
        build_calibration(CalibConfig(data=str(toy), out=str(tmp_path / "x"), tile=100))
    with pytest.raises(DatasetError, match="split"):
        build_calibration(CalibConfig(data=str(toy), out=str(tmp_path / "y"), split="nope"))


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2.0, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-s))).astype(np.int64)
    # logits 3x too confident: the fitted temperature should undo it
    T_fit = fit_temperature(3.0 * s, y)
    assert abs(T_fit - 3.0) < 0.3


def test_threshold_at_fpr_meets_the_target():
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.random(200) * 0.7, 0.3 + rng.random(100) * 0.7])
    y = np.concatenate([np.zeros(200, int), np.ones(100, int)])
    for target in (0.0, 0.05, 0.2):
        t = threshold_at_fpr(p, y, target)
        fpr = (p[y == 0] >= t).mean()
        assert fpr <= target + 1e-12
        # tight: one more real image above t would exceed the target
        assert fpr > target - 1.0 / 200 - 1e-12


def test_calibrate_thresholds_end_to_end(toy, tmp_path):
    from defaker_edge.quantize.modelopt_ptq import export_onnx
    from defaker_edge.runtime.package import _thresholds

    onnx_path = export_onnx(ToyDetector(), tmp_path / "m" / "model.onnx", T)
    th, path = calibrate_thresholds(ThresholdConfig(model=str(onnx_path), data=str(toy), target_fpr=0.25))
    assert path == onnx_path.parent / "thresholds.json"
    d = json.loads(path.read_text())
    assert d["aggregate"] == "max" and d["target_fpr"] == 0.25
    assert d["measured"]["n"] == 16 and d["measured"]["fpr"] <= 0.25
    assert d["measured"]["tpr"] == 1.0  # the toy detector separates the toy fakes
    assert d["temperature"] > 0 and d["measured"]["nll_after"] <= d["measured"]["nll_before"] + 1e-9
    lo, hi = d["band"]
    assert lo <= d["threshold"] <= hi
    _thresholds(d, path)  # the runtime's package reader accepts it
    # the binary mask's cut: fitted on the same images (a 5% pixel budget on authentic images by default),
    # both rules recorded
    assert 0.0 < d["pixel_threshold"] < 1.0 and d["pixel"]["pixel_rule"] == "fpr"
    cand = d["pixel"]["candidates"]
    assert d["pixel_threshold"] == cand["fpr"]["threshold"] and cand["fpr"]["mean_pixel_fpr"] <= 0.05
    assert cand["f1"]["mean_f1"] >= d["pixel"]["at_0.5"]["mean_f1"]
    assert d["pixel"]["n_fake_masks"] > 0 and d["pixel"]["n_real"] > 0
    assert _thresholds(d, path).pixel_threshold == d["pixel_threshold"]

    # a "quantized" model that leans one way: the band re-runs where its decision flips at FP32
    import torch

    worse = ToyDetector()
    with torch.no_grad():
        worse.head.bias.add_(1.5)
    q = export_onnx(worse, tmp_path / "q.onnx", T)
    th2, p2 = calibrate_thresholds(ThresholdConfig(model=str(onnx_path), data=str(toy), target_fpr=0.25,
                                                   compare=str(q), out=str(tmp_path / "t2.json")))
    T2, t2 = th2.temperature, th2.threshold
    rule = th2.band_rule
    assert rule["dz_max"] == pytest.approx(1.5 / T2, rel=1e-3)
    # every quantized logit is 1.5 higher: a flip is only ever a quantized "fake" within 1.5 / T above
    # the threshold, so the band is lopsided: nothing below the threshold, 1.5 / T above it
    assert rule["w_lo"] == pytest.approx(0.0, abs=1e-6) and rule["w_hi"] == pytest.approx(1.5 / T2, rel=1e-3)
    from defaker_edge.quantize.evaluate import heldout_samples, onnx_runner, predict_images

    samples = heldout_samples(str(toy), None)  # the images calibrate_thresholds scored
    zs = [np.array([r.logit for r in predict_images(onnx_runner(m, T), samples, T, masks=False)])
          for m in (onnx_path, q)]
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    p32, pq = sig(zs[0] / T2), sig(zs[1] / T2)
    flipped = (pq >= t2) != (p32 >= t2)
    assert rule["flips"] == rule["flips_in_band"] == int(flipped.sum()) > 0
    lo, hi = th2.band
    assert lo == pytest.approx(t2) and np.all((pq[flipped] >= lo - 1e-9) & (pq[flipped] <= hi + 1e-9))
    inside = (pq >= lo) & (pq <= hi)
    assert th2.measured["in_band"] == pytest.approx(float(inside.mean()))
    # the shift is the same on every tile, so FP32's best tile is the quantized best tile: margin 0
    d2 = json.loads(p2.read_text())
    assert d2["rerun_margin"] == pytest.approx(0.0, abs=1e-5)
    assert _thresholds(d2, p2).rerun_margin == d2["rerun_margin"]


def test_flip_rate_band_reads_the_flip_chance_off_dz():
    from defaker_edge.calibration.thresholds import flip_rate_band

    rng = np.random.default_rng(3)
    s = rng.normal(0, 1, 4000)
    sq = s + rng.normal(0.05, 0.1, 4000)  # quantized: a little higher, some noise
    widths = [flip_rate_band(s, sq, r)[:2] for r in (0.4, 0.25, 0.1)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(widths, widths[1:]))  # lower rate: wider band
    w_lo, w_hi, rec = flip_rate_band(s, sq, 0.25)
    assert w_hi > w_lo >= 0  # lopsided toward where the quantized model leans
    # at the band's edge the chance of a flip is the rate: P(dz > w_hi) = 0.25
    assert np.mean(sq - s > w_hi) == pytest.approx(0.25, abs=0.01)
    flipped = (sq >= 0) != (s >= 0)
    inside = (sq >= -w_lo) & (sq <= w_hi)
    assert rec["flips"] == flipped.sum() and rec["flips_in_band"] == (flipped & inside).sum()
    # inside the band flips are common, outside rare: what the band is for
    assert (flipped & inside).sum() / inside.sum() > 0.25 > (flipped & ~inside).sum() / (~inside).sum()


def test_rerun_margin_reaches_the_tile_fp32_ranks_best():
    from defaker_edge.calibration.thresholds import rerun_margin

    fp = [np.array([0.0, 1.0, 0.5]), np.array([2.0, 1.0]), np.array([0.3])]
    q = [np.array([0.2, 0.9, 1.0]), np.array([2.1, 1.0]), np.array([0.4])]
    assert rerun_margin(fp, q) == pytest.approx(0.1)  # image 1: best at FP32 is tile 1, 0.1 below q's best


def test_calibrate_cli(toy, tmp_path, capsys):
    from defaker_edge.cli import main

    rc = main(["calibrate", "build", "--data", str(toy), "--out", str(tmp_path / "C"), "--per-domain", "2",
               "--tile", str(T), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 8 and set(out["counts"]) == {"natural", "document", "face", "aigc"}
    rc = main(["calibrate", "build", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "D")])
    assert rc == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_thresholds_from_a_student_dir(toy, tmp_path):
    import torch

    from defaker_edge.student import StudentConfig, build_student, save_student

    torch.manual_seed(0)
    cfg = StudentConfig.from_preset("compact-s", tile=T)
    sdir = save_student(build_student(cfg).eval(), cfg, tmp_path / "S")
    th, path = calibrate_thresholds(ThresholdConfig(model=str(sdir), data=str(toy), target_fpr=0.125))
    assert path == sdir / "thresholds.json" and path.is_file()
    assert th.measured["fpr"] <= 0.125 and th.measured["n"] == 16
    assert th.band[0] <= th.threshold <= th.band[1]


def test_thresholds_record_their_overlap_and_export_keeps_to_it(toy, tmp_path):
    """thresholds.json records the tiling it was fitted at; export takes that overlap by default and
    refuses another (the threshold is fitted on max-aggregated tile logits, which depend on it)."""
    from defaker_edge.export import write_package
    from defaker_edge.runtime import Detector
    from test_export import make_student

    sdir = tmp_path / "S"
    model, cfg = make_student(sdir)
    th, path = calibrate_thresholds(ThresholdConfig(model=str(sdir), data=str(toy), target_fpr=0.25, overlap=0))
    assert path == sdir / "thresholds.json" and th.band_rule["overlap"] == 0
    tile = cfg.tile
    pkg = write_package(model, cfg, tmp_path / "P", model_dir=sdir)
    assert pkg.manifest["input"]["overlap"] == 0 and pkg.manifest["input"]["stride"] == tile
    det = Detector.load(str(pkg.path))
    assert det.check(np.zeros((2 * tile, 2 * tile, 3), np.uint8)).n_tiles == 4  # no overlap: 2 x 2 tiles
    det.close()
    with pytest.raises(ArtifactError, match="calibrated at tile overlap 0.*Omit --overlap to use 0.*--overlap 16"):
        write_package(model, cfg, tmp_path / "P2", model_dir=sdir, overlap=tile // 4)
    for bad in (tile, 12):  # past half a tile; off the 8 px grid
        with pytest.raises(DefakerError, match="--overlap must be a multiple of 8"):
            calibrate_thresholds(ThresholdConfig(model=str(sdir), data=str(toy), overlap=bad))
    # a thresholds.json from before the overlap was recorded was fitted at 64, whatever the tile
    d = json.loads(path.read_text())
    del d["band_rule"]["overlap"]
    path.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="calibrated at tile overlap 64 \\(recorded before"):
        write_package(model, cfg, tmp_path / "P3", model_dir=sdir, overlap=0)
