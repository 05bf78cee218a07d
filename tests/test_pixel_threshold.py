"""The binary mask's cut (calibration.pixel), pixel AUC, and the paired bootstrap (metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from defaker_edge.calibration.pixel import (fit_pixel_threshold, level_histograms, level_to_threshold,
                                            mean_f1_per_level)
from defaker_edge.metrics import bootstrap_auc, image_auc, pixel_scores


def _faint(rng, h=64, w=64):
    """A mask whose edited pixels sit at ~0.3 and the rest at ~0.05: a 0.5 cut marks nothing."""
    gt = np.zeros((h, w), bool)
    gt[16:40, 20:44] = True
    prob = np.where(gt, 0.3, 0.05) + rng.normal(0, 0.02, (h, w))
    return np.clip(prob, 0, 1).astype(np.float32), gt


def test_f1_rule_finds_the_cut_a_faint_mask_needs():
    rng = np.random.default_rng(0)
    fakes = [level_histograms(*_faint(rng)) for _ in range(5)]
    reals = [level_histograms(np.clip(rng.normal(0.05, 0.02, (64, 64)), 0, 1), None) for _ in range(5)]
    fit = fit_pixel_threshold(fakes, reals, "f1")
    assert fit["pixel_rule"] == "f1" and 0.1 < fit["pixel_threshold"] < 0.3
    assert fit["candidates"]["f1"]["mean_f1"] > 0.95 and fit["at_0.5"]["mean_f1"] == 0.0
    # the cut means what pixel_scores means by it: F1 there equals the histogram's figure
    prob, gt = _faint(np.random.default_rng(0))
    assert pixel_scores(prob, gt, threshold=fit["pixel_threshold"])["pixel_f1"] > 0.95


def test_fpr_rule_keeps_the_authentic_pixel_budget():
    rng = np.random.default_rng(1)
    reals = [level_histograms(rng.uniform(0, 1, (50, 50)), None) for _ in range(4)]
    fit = fit_pixel_threshold([], reals, "fpr", fpr=0.1)
    assert fit["candidates"]["fpr"]["mean_pixel_fpr"] <= 0.1
    assert fit["pixel_threshold"] == pytest.approx(0.9, abs=0.01)
    with pytest.raises(ValueError, match="pixel rule"):
        fit_pixel_threshold([], reals, "best")


def test_level_cut_is_consistent_with_rounding():
    p = np.random.default_rng(3).uniform(0, 1, 20000)
    levels = np.clip(np.rint(p * 255.0), 0, 255)
    for lv in (1, 77, 128, 255):  # p >= cut exactly where the 256-level histogram says level >= lv
        assert np.array_equal(p >= level_to_threshold(lv), levels >= lv)
    assert mean_f1_per_level([]).shape == (256,)


def test_pixel_auc_orders_pixels_without_a_cut():
    gt = np.zeros((10, 10), bool)
    gt[:5] = True
    assert pixel_scores(np.where(gt, 0.2, 0.1), gt)["pixel_auc"] == pytest.approx(1.0)
    assert pixel_scores(np.where(gt, 0.1, 0.2), gt)["pixel_auc"] == pytest.approx(0.0)
    assert pixel_scores(np.full((10, 10), 0.3), gt)["pixel_auc"] == pytest.approx(0.5)


def test_paired_bootstrap_sees_a_real_gain_and_not_noise():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(150), np.zeros(150)].astype(int)
    weak = y * 0.3 + rng.normal(0, 1, 300)
    strong = y * 1.5 + rng.normal(0, 1, 300)
    d = bootstrap_auc(y, strong, weak, n=400)
    assert d["value"] == pytest.approx(image_auc(y, strong) - image_auc(y, weak))
    assert d["lo"] > 0
    same = bootstrap_auc(y, weak + rng.normal(0, 0.01, 300), weak, n=400)
    assert same["lo"] < 0 < same["hi"]
    ci = bootstrap_auc(y, strong, n=400)
    assert ci["lo"] < ci["value"] < ci["hi"]
