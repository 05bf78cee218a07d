"""metrics.py against scikit-learn, and `defaker eval` on a predictions file written by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, jaccard_score, roc_auc_score

from defaker_edge.cli import main
from defaker_edge.metrics import Record, balanced_accuracy, image_auc, pixel_scores, summarize


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounding makes many ties
    assert abs(image_auc(y, s) - roc_auc_score(y, s)) < 1e-12


def test_auc_degenerate_and_bad_input():
    assert np.isnan(image_auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError):
        image_auc([0, 1], [0.1, float("nan")])


def test_balanced_accuracy_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = rng.random(300)
    for t in (0.2, 0.5, 0.8):
        assert abs(balanced_accuracy(y, s, t) - balanced_accuracy_score(y, s >= t)) < 1e-12


def test_pixel_scores_match_sklearn():
    rng = np.random.default_rng(4)
    gt = np.zeros((40, 50), bool)
    gt[10:25, 5:30] = True
    prob = np.clip(gt * 0.6 + rng.random((40, 50)) * 0.5, 0, 1)
    s = pixel_scores(prob, gt)
    pred = prob >= 0.5
    assert abs(s["pixel_f1"] - f1_score(gt.ravel(), pred.ravel())) < 1e-12
    assert abs(s["pixel_iou"] - jaccard_score(gt.ravel(), pred.ravel())) < 1e-12
    levels = np.clip(np.rint(prob * 255), 0, 255)
    best = max(f1_score(gt.ravel(), (levels >= t).ravel(), zero_division=0) for t in range(256))
    assert abs(s["pixel_f1_best"] - best) < 1e-12
    assert pixel_scores(np.zeros((4, 4)), np.ones((4, 4), bool))["pixel_f1"] == 0.0


def test_summarize_per_domain():
    recs = [Record(1, 0.9, "natural", {"pixel_f1": 1.0, "pixel_f1_best": 1.0, "pixel_iou": 1.0}),
            Record(0, 0.1, "natural"), Record(1, 0.4, "document", None), Record(0, 0.6, "document")]
    r = summarize(recs)
    assert r["overall"]["n"] == 4 and r["per_domain"]["natural"]["image_auc"] == 1.0
    assert r["per_domain"]["document"]["image_auc"] == 0.0
    assert r["overall"]["pixel_f1"] == 1.0 and r["overall"]["n_masks"] == 1


def _write_dataset(tmp_path, rng):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    lines, truth = [], []
    for i in range(12):
        h, w = 20 + i, 30
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"images/{i}.png")
        label = i % 2
        mask = None
        gt = None
        if label:
            gt = np.zeros((h, w), np.uint8)
            gt[2:10, 3:20] = 255
            Image.fromarray(gt).save(tmp_path / f"masks/{i}.png")
            mask = f"masks/{i}.png"
        lines.append({"image": f"images/{i}.png", "mask": mask, "label": label,
                      "domain": "natural" if i < 6 else "document"})
        truth.append((label, gt, h, w))
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return truth


def test_eval_cli_agrees_with_sklearn(tmp_path, capsys):
    rng = np.random.default_rng(7)
    truth = _write_dataset(tmp_path, rng)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    preds, probs, labels, f1s = [], [], [], []
    for i, (label, gt, h, w) in enumerate(truth):
        p = float(rng.random())
        entry = {"image": f"images/{i}.png", "fake_prob": p, "mask": None}
        if label:
            pm = rng.integers(0, 256, (h, w), dtype=np.uint8)
            Image.fromarray(pm).save(pred_dir / f"{i}.png")
            entry["mask"] = f"{i}.png"
            f1s.append(f1_score((gt > 0).ravel(), (pm / 255.0 >= 0.5).ravel()))
        preds.append(entry)
        probs.append(p)
        labels.append(label)
    (pred_dir / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in preds))
    rc = main(["eval", "--predictions", str(pred_dir / "p.jsonl"), "--data", str(tmp_path / "manifest.jsonl"),
               "--out", str(tmp_path / "r.json")])
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert abs(r["overall"]["image_auc"] - roc_auc_score(labels, probs)) < 1e-6
    assert abs(r["overall"]["pixel_f1"] - np.mean(f1s)) < 1e-6
    assert set(r["per_domain"]) == {"natural", "document"}
    json.loads(capsys.readouterr().out)  # stdout is one JSON object


def test_eval_cli_missing_prediction_is_one_clear_error(tmp_path, capsys):
    _write_dataset(tmp_path, np.random.default_rng(0))
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "images/0.png", "fake_prob": 0.3}) + "\n")
    rc = main(["eval", "--predictions", str(tmp_path / "p.jsonl"), "--data", str(tmp_path / "manifest.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "have no prediction" in err and "Traceback" not in err


def test_eval_cli_scores_heatmaps_at_their_pixel_threshold(tmp_path, capsys):
    """A check line with a heatmap: pixel F1 at the line's pixel_threshold (or --pixel-threshold),
    best-cut F1 and pixel AUC from the heatmap; the binary mask beside it is not needed."""
    rng = np.random.default_rng(3)
    truth = _write_dataset(tmp_path, rng)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    preds, f1_at = [], {0.3: [], 0.7: []}
    aucs, marked = [], []
    for i, (label, gt, h, w) in enumerate(truth):
        entry = {"image": f"images/{i}.png", "fake_prob": float(rng.random()), "pixel_threshold": 0.3}
        heat = rng.integers(0, 256, (h, w), dtype=np.uint8)
        Image.fromarray(heat).save(pred_dir / f"{i}.heatmap.png")
        entry["heatmap"] = f"{i}.heatmap.png"
        if not label:  # an authentic image's heatmap: what its binary mask wrongly marks
            marked.append(float((heat / 255.0 >= 0.3).mean()))
        if label:
            for cut in f1_at:
                f1_at[cut].append(f1_score((gt > 0).ravel(), (heat / 255.0 >= cut).ravel()))
            aucs.append(roc_auc_score((gt > 0).ravel(), heat.ravel()))
        preds.append(entry)
    (pred_dir / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in preds))
    args = ["eval", "--predictions", str(pred_dir / "p.jsonl"), "--data", str(tmp_path / "manifest.jsonl")]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert abs(r["overall"]["pixel_f1"] - np.mean(f1_at[0.3])) < 1e-6
    assert abs(r["overall"]["pixel_auc"] - np.mean(aucs)) < 1e-6
    assert abs(r["overall"]["pixel_fpr_authentic"] - np.mean(marked)) < 1e-6
    assert main(args + ["--pixel-threshold", "0.7"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["overall"]["pixel_f1"] - np.mean(f1_at[0.7])) < 1e-6
    assert main(args + ["--pixel-threshold", "1.5"]) == 2


def test_eval_cli_writes_per_image_scores_for_the_chain(tmp_path, capsys):
    """--scores-out: each image's probability and pixel scores at the lines' cut, in the held-out score format."""
    rng = np.random.default_rng(5)
    truth = _write_dataset(tmp_path, rng)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    preds = []
    for i, (label, gt, h, w) in enumerate(truth):
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(pred_dir / f"{i}.heatmap.png")
        preds.append({"image": f"images/{i}.png", "fake_prob": float(rng.random()), "pixel_threshold": 0.25,
                      "heatmap": f"{i}.heatmap.png"})
    (pred_dir / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in preds))
    assert main(["eval", "--predictions", str(pred_dir / "p.jsonl"), "--data", str(tmp_path / "manifest.jsonl"),
                 "--scores-out", str(tmp_path / "s.json")]) == 0
    r = json.loads(capsys.readouterr().out)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["pixel_cut"] == 0.25 and len(s["images"]) == len(truth)
    assert [x["fake_prob"] for x in s["images"]] == [p["fake_prob"] for p in preds]
    f1 = [x["pixel"]["pixel_f1"] for x in s["images"] if x["pixel"]]
    assert abs(np.mean(f1) - r["overall"]["pixel_f1"]) < 1e-9
