"""Accuracy of one predictor on a dataset, with the project's one metrics implementation.

Detection: image AUC and balanced accuracy at the package's calibrated threshold. Localization:
pixel F1 and IoU at the package's pixel threshold (the binary mask a user gets), best-threshold F1
and pixel AUC on fakes that have a mask (`metrics.summarize`, per domain and overall). Agreement between two predictors on the same images: the fraction of equal
decisions (each at its own threshold) and the mean |difference| of fake probabilities.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..data.dataset import Sample
from ..data.io import load_dataset_image, load_mask
from ..metrics import Record, pixel_scores, summarize

# (image, gt mask or None) -> (image, gt mask or None)
Perturb = Callable[[np.ndarray, "np.ndarray | None"], tuple[np.ndarray, "np.ndarray | None"]]


@dataclass
class EvalResult:
    probs: list[float]  # per sample, in dataset order
    decisions: list[bool]
    summary: dict  # metrics.summarize output
    n_fallback: int  # images another path answered (Detector only; 0 with fallback off)
    # per domain and "all": {"n", "in_band", "share"}: the images a deployed Detector would re-run
    # at FP32 (its score in the package's band; Detector only, else 0)
    band: dict = field(default_factory=dict)


def evaluate(predictor, samples: list[Sample], threshold: float, *, perturb: Perturb | None = None,
             desc: str = "accuracy", show_progress: bool = True, pixel_threshold: float = 0.5) -> EvalResult:
    from .latency import progress as progress_bar

    records, probs, decisions = [], [], []
    n_fallback = 0
    n_dom, band_dom = Counter(), Counter()
    for s in (progress_bar(samples, desc, leave=False) if show_progress else samples):
        img = load_dataset_image(s.image)
        gt = None
        if s.label == 1 and s.mask:
            gt, _ = load_mask(s.mask, size=img.shape[:2])
        if perturb is not None:
            img, gt = perturb(img, gt)
        # unperturbed, the predictor gets the file too: its JPEG table is the compression-history
        # stream's input, as on a device; a perturbed image is pixels without a file (no table)
        p = predictor.check(img, source=s.image if perturb is None else None)
        if p.fallback:
            n_fallback += 1
        n_dom[s.domain] += 1
        band_dom[s.domain] += bool(getattr(p, "uncertain", False))
        pix = None
        if gt is not None:
            mask = p.mask
            if mask.shape != gt.shape:
                raise RuntimeError(f"{s.image}: predicted mask {mask.shape} differs from the image {gt.shape}")
            pix = pixel_scores(mask, gt, threshold=pixel_threshold)
        records.append(Record(label=s.label, fake_prob=float(p.fake_prob), domain=s.domain, pixel=pix))
        probs.append(float(p.fake_prob))
        decisions.append(bool(p.fake_prob >= threshold))
    return EvalResult(probs, decisions, summarize(records, threshold), n_fallback, band_shares(n_dom, band_dom))


def band_shares(n: Counter, in_band: Counter) -> dict:
    """{"all" and each domain: {"n", "in_band", "share"}} from per-domain counts."""
    out = {d: {"n": n[d], "in_band": in_band[d], "share": in_band[d] / n[d]} for d in sorted(n)}
    tot, hit = sum(n.values()), sum(in_band.values())
    out["all"] = {"n": tot, "in_band": hit, "share": hit / tot if tot else None}
    return out


def agreement(a: EvalResult, b: EvalResult) -> dict:
    """How often two predictors decide alike on the same images, and how far their probabilities are."""
    if len(a.probs) != len(b.probs):
        raise ValueError("agreement needs the same images in the same order")
    pa, pb = np.asarray(a.probs), np.asarray(b.probs)
    same = np.asarray(a.decisions) == np.asarray(b.decisions)
    return {"n": int(len(pa)), "same_decision": float(same.mean()) if len(pa) else None,
            "mean_abs_dprob": float(np.abs(pa - pb).mean()) if len(pa) else None,
            "max_abs_dprob": float(np.abs(pa - pb).max()) if len(pa) else None}


def headline(summary: dict) -> dict:
    """The overall numbers tables and plots show."""
    o = summary.get("overall", {})
    return {k: o.get(k) for k in ("image_auc", "balanced_acc", "pixel_f1", "pixel_f1_best", "pixel_iou", "pixel_auc",
                                  "n")}
