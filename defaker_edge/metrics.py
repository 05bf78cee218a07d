"""The one implementation of every metric (DESIGN §8), numpy only so the runtime and bench share it.

Detection: image AUC (ties count half, as scikit-learn's roc_auc_score) and balanced accuracy at
a threshold (a score >= threshold is called fake). Localization, on manipulated images that have a
ground-truth mask, averaged per image as TruFor / IMDLBenCo do: pixel F1 and IoU at a cut (0.5, or
the package's calibrated pixel threshold where the caller passes it), best-threshold F1 (the best of
256 thresholds for each image) and pixel AUC. A prediction with no positive pixel
against a non-empty mask scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


def image_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC by the rank statistic with average ranks for ties. NaN if only one class is present."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold NaN or Inf")
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average rank over each run of equal scores
    i = 0
    n = len(s)
    while i < n:
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    sum_pos = ranks[y == 1].sum()
    return float((sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def balanced_accuracy(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> float:
    """Mean of the true-positive and true-negative rates; a class that is absent is left out."""
    y = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    rates = []
    if (y == 1).any():
        rates.append(float(pred[y == 1].mean()))
    if (y == 0).any():
        rates.append(float((~pred[y == 0]).mean()))
    return float(np.mean(rates)) if rates else float("nan")


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def pixel_scores(prob: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Per-image localization scores. prob: [H, W] in [0, 1] (or uint8 0..255); gt: [H, W] bool."""
    p = np.asarray(prob)
    if p.dtype == np.uint8:
        levels = p.astype(np.int64)
        pf = p.astype(np.float64) / 255.0
    else:
        pf = np.nan_to_num(p.astype(np.float64), nan=0.0)
        levels = np.clip(np.rint(pf * 255.0), 0, 255).astype(np.int64)
    g = np.asarray(gt).astype(bool)
    if pf.shape != g.shape:
        raise ValueError(f"predicted mask {pf.shape} and ground truth {g.shape} differ in shape")
    pred = pf >= threshold
    tp = float(np.logical_and(pred, g).sum())
    fp = float(np.logical_and(pred, ~g).sum())
    fn = float(np.logical_and(~pred, g).sum())
    f1 = float(_f1(np.array(tp), np.array(fp), np.array(fn)))
    union = tp + fp + fn
    iou = tp / union if union > 0 else 0.0
    # best threshold: counts of positives/negatives at each of 256 levels, cumulated from the top
    pos_hist = np.bincount(levels[g], minlength=256)[:256].astype(np.float64)
    neg_hist = np.bincount(levels[~g], minlength=256)[:256].astype(np.float64)
    tp_t = np.cumsum(pos_hist[::-1])[::-1]  # predicted positive if level >= t
    fp_t = np.cumsum(neg_hist[::-1])[::-1]
    fn_t = g.sum() - tp_t
    f1_best = float(_f1(tp_t, fp_t, fn_t).max())
    # pixel AUC from the same histograms (ties within a level count half): threshold-free, so a
    # faint but well-placed mask shows here even where every cut's F1 is low
    n_pos, n_neg = pos_hist.sum(), neg_hist.sum()
    if n_pos > 0 and n_neg > 0:
        below = np.cumsum(neg_hist) - neg_hist  # negatives strictly below each level
        auc = float(((below + 0.5 * neg_hist) * pos_hist).sum() / (n_pos * n_neg))
    else:
        auc = float("nan")
    return {"pixel_f1": f1, "pixel_f1_best": max(f1_best, f1), "pixel_iou": float(iou), "pixel_auc": auc}


@dataclass
class Record:
    """One image's prediction joined with its ground truth, for `summarize`."""
    label: int
    fake_prob: float
    domain: str = "natural"
    pixel: dict[str, float] | None = None  # pixel_scores(), for fakes that have a mask
    kind: str | None = None  # the manipulation ("authentic" for real images); None: not reported per kind


def _summary(records: list[Record], threshold: float) -> dict[str, float | int]:
    labels = [r.label for r in records]
    probs = [r.fake_prob for r in records]
    pix = [r.pixel for r in records if r.pixel is not None]
    out: dict[str, float | int] = {
        "n": len(records),
        "n_fake": int(sum(labels)),
        "n_real": len(labels) - int(sum(labels)),
        "image_auc": image_auc(labels, probs),
        "balanced_acc": balanced_accuracy(labels, probs, threshold),
        "n_masks": len(pix),
    }
    for k in ("pixel_f1", "pixel_f1_best", "pixel_iou", "pixel_auc"):
        vals = [p[k] for p in pix if k in p and p[k] == p[k]]  # older records lack pixel_auc; NaN: one class
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def per_kind(recs: list[Record], threshold: float) -> dict:
    """{domain: {kind: summary}}: each manipulation's fakes against the authentic images of the same
    domain, so one kind's AUC is not lifted or sunk by how easy the other kinds are."""
    out: dict[str, dict] = {}
    for d in sorted({r.domain for r in recs if r.kind is not None}):
        real = [r for r in recs if r.domain == d and r.label == 0]
        kinds = sorted({r.kind for r in recs if r.domain == d and r.label == 1 and r.kind is not None})
        out[d] = {k: _summary([r for r in recs if r.domain == d and r.label == 1 and r.kind == k] + real,
                              threshold) for k in kinds}
    return out


def summarize(records: Iterable[Record], threshold: float = 0.5) -> dict:
    """Metrics overall, per domain and per manipulation kind:
    {"overall": {...}, "per_domain": {domain: {...}}, "per_kind": {domain: {kind: {...}}}, "threshold": t}."""
    recs = list(records)
    domains = sorted({r.domain for r in recs})
    return {
        "threshold": threshold,
        "overall": _summary(recs, threshold),
        "per_domain": {d: _summary([r for r in recs if r.domain == d], threshold) for d in domains},
        "per_kind": per_kind(recs, threshold),
    }


def bootstrap_auc(labels: Sequence[int], scores: Sequence[float], other: Sequence[float] | None = None,
                  n: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Image AUC (or, with `other`, AUC(scores) - AUC(other) on the same images) with a percentile
    bootstrap interval: images resampled with replacement, fakes and reals separately (so every
    replicate has both classes), the same draw for both score sets (a paired comparison)."""
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(scores, dtype=np.float64)
    b = None if other is None else np.asarray(other, dtype=np.float64)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": int(len(y))}

    def stat(idx: np.ndarray) -> float:
        v = image_auc(y[idx], a[idx])
        return v - image_auc(y[idx], b[idx]) if b is not None else v

    rng = np.random.default_rng(seed)
    reps = np.array([stat(np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]))
                     for _ in range(n)])
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"value": stat(np.arange(len(y))), "lo": float(lo), "hi": float(hi), "n": int(len(y))}
