"""Temperature scaling, the decision threshold at a target FPR, and the full-precision band.

All on image-level logits z = aggregate_logits(tile logits) (max), scored on held-out images the
way the runtime scores them (quantize.evaluate).

- Temperature T: minimises the binary NLL of sigmoid(z / T) against the labels. The NLL is convex
  in 1/T, so a golden-section search on log T over [1e-2, 1e2] finds the optimum (1-D, no torch).
- Threshold t on p = sigmoid(z / T): the largest FPR on the real images that is <= target_fpr,
  placed half-way between the k-th highest real probability and the next higher score (k =
  floor(target_fpr * n_real)), so the validation FPR/TPR do not hinge on float ties.
- Band [lo, hi]: the runtime re-runs an image at full precision when lo <= p <= hi. Rule, in
  logit space around logit(t), half-width w = max(w_frac, w_quant):
    w_frac  = the band_frac quantile of |z/T - logit(t)| over the validation images, i.e. the
              band_frac share of images nearest the threshold (default 10%);
    w_quant = (with --compare Q.onnx) over the validation images whose quantized decision differs
              from the FP32 one, the largest |z_q / T - logit(t)|: the narrowest band around the
              threshold that holds every such image (the runtime tests the quantized probability,
              so that is the distance that matters). An image whose logits differ a lot but far from
              the threshold flips nothing and does not widen the band; the largest |z_q - z| / T is
              recorded too (`dz_max`).
  band = [sigmoid(logit(t) - w), sigmoid(logit(t) + w)].
- Pixel threshold: where the heatmap becomes the binary mask (calibration.pixel), fitted on the same
  images' mask-level histograms.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import sha256_file, utc_now, write_json
from ..errors import DatasetError, DefakerError
from ..runtime.tiling import check_overlap, default_overlap
from .pixel import fit_pixel_threshold

log = logging.getLogger(__name__)


@dataclass
class ThresholdConfig:
    model: str  # student dir, .onnx file, or a quantize output dir (its model.onnx)
    data: str  # manifest with a held-out split
    target_fpr: float = 0.05
    split: str | None = None  # default val, else test
    out: str | None = None  # default: <model dir>/thresholds.json
    band_frac: float = 0.10
    compare: str | None = None  # quantized ONNX whose disagreement with the model widens the band
    batch: int = 8
    overlap: int | None = None  # tile overlap the images are scored at; None: the package default, min(64, tile // 4)
    threads: int | None = None
    pixel_rule: str = "f1"  # the binary mask's cut: best mean F1 on val fakes, or a pixel-FPR budget (calibration.pixel)
    pixel_fpr: float = 0.01


@dataclass
class Thresholds:
    temperature: float
    threshold: float
    band: list[float]
    target_fpr: float
    aggregate: str = "max"
    measured: dict = field(default_factory=dict)
    band_rule: dict = field(default_factory=dict)
    pixel_threshold: float = 0.5  # heatmap >= this is the binary mask
    pixel: dict = field(default_factory=dict)  # how the pixel threshold was fitted (calibration.pixel)

    def to_json(self) -> dict:
        return asdict(self)


def _sig(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def nll(z: np.ndarray, y: np.ndarray, T: float) -> float:
    s = z / T
    # log(1 + e^-s) for y=1 and log(1 + e^s) for y=0, computed stably
    return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -s, s))))


def fit_temperature(z: np.ndarray, y: np.ndarray, lo: float = 1e-2, hi: float = 1e2, iters: int = 80) -> float:
    """argmin_T NLL(sigmoid(z/T), y) by golden-section search on log T."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(z, y, math.exp(c)), nll(z, y, math.exp(d))
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(z, y, math.exp(d))
    return math.exp((a + b) / 2)


def threshold_at_fpr(p: np.ndarray, y: np.ndarray, target_fpr: float) -> float:
    neg = np.sort(p[y == 0])[::-1]
    if neg.size == 0:
        raise DatasetError("threshold calibration needs real (label 0) images in the held-out split")
    k = int(math.floor(target_fpr * neg.size + 1e-9))
    if k >= neg.size:
        return float(p.min())  # every image called fake meets an FPR of 1
    anchor = neg[k]
    above = p[p > anchor]
    nxt = float(above.min()) if above.size else float(np.nextafter(anchor, 2.0))
    return float((anchor + nxt) / 2)


def _runner(model: str, threads: int | None):
    from ..quantize.evaluate import model_path_kind, onnx_runner, onnx_tile, torch_runner

    kind = model_path_kind(model)
    p = Path(model)
    if kind == "student":
        from ..student import load_student

        m, scfg = load_student(p)
        return torch_runner(m), scfg.tile, p / "thresholds.json", sha256_file(p / "model.safetensors")
    onnx = p / "model.onnx" if kind == "onnx-dir" else p
    return (onnx_runner(onnx, onnx_tile(onnx), threads), onnx_tile(onnx), onnx.parent / "thresholds.json",
            sha256_file(onnx))


def calibrate_thresholds(cfg: ThresholdConfig) -> tuple[Thresholds, Path]:
    """Fit temperature, threshold and band on held-out data; write thresholds.json; return both."""
    from ..quantize.evaluate import heldout_samples, onnx_runner, onnx_tile, predict_images

    if not 0.0 <= cfg.target_fpr < 1.0:
        raise DefakerError(f"--target-fpr must be in [0, 1), got {cfg.target_fpr}")
    if not 0.0 <= cfg.band_frac <= 1.0:
        raise DefakerError(f"--band-frac must be in [0, 1], got {cfg.band_frac}")
    run, tile, default_out, sha = _runner(cfg.model, cfg.threads)
    try:
        overlap = default_overlap(tile) if cfg.overlap is None else check_overlap(cfg.overlap, tile)
    except ValueError as e:
        raise DefakerError(str(e)) from None
    samples = heldout_samples(cfg.data, cfg.split)
    preds = predict_images(run, samples, tile, overlap=overlap, batch=cfg.batch, masks=False, desc="thresholds",
                           hists=True)
    try:
        pix = fit_pixel_threshold([p.hist for p in preds if p.label == 1 and p.hist is not None],
                                  [p.hist for p in preds if p.label == 0 and p.hist is not None],
                                  cfg.pixel_rule, cfg.pixel_fpr)
    except ValueError as e:
        raise DefakerError(str(e)) from None
    z = np.array([p.logit for p in preds], dtype=np.float64)
    y = np.array([p.label for p in preds], dtype=np.int64)
    if (y == 1).sum() == 0 or (y == 0).sum() == 0:
        raise DatasetError(f"{cfg.data}: the held-out split needs both real and fake images "
                           f"(has {(y == 0).sum()} real, {(y == 1).sum()} fake)")
    T = fit_temperature(z, y)
    p = _sig(z / T)
    t = threshold_at_fpr(p, y, cfg.target_fpr)
    lt = _logit(t)
    w_frac = float(np.quantile(np.abs(z / T - lt), cfg.band_frac)) if cfg.band_frac > 0 else 0.0
    w_quant, flips, dz_max = 0.0, None, None
    if cfg.compare:
        qt = onnx_tile(cfg.compare)
        if qt != tile:
            raise DefakerError(f"--compare model has tile {qt}, the model {tile}")
        qz = np.array([q.logit for q in predict_images(onnx_runner(cfg.compare, qt, cfg.threads), samples, qt,
                                                       overlap=overlap, batch=cfg.batch, masks=False,
                                                       desc="compare")])
        flipped = (_sig(qz / T) >= t) != (p >= t)
        flips = int(flipped.sum())
        w_quant = float(np.abs(qz[flipped] / T - lt).max()) if flips else 0.0
        dz_max = float(np.abs(qz - z).max() / T)
    w = max(w_frac, w_quant)
    pred = p >= t
    measured = {"fpr": float(pred[y == 0].mean()), "tpr": float(pred[y == 1].mean()), "n": int(len(y)),
                "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
                "nll_before": nll(z, y, 1.0), "nll_after": nll(z, y, T),
                "in_band": float(((p >= _sig(lt - w)) & (p <= _sig(lt + w))).mean())}
    th = Thresholds(temperature=T, threshold=t, band=[float(_sig(lt - w)), float(_sig(lt + w))],
                    target_fpr=cfg.target_fpr, measured=measured, pixel_threshold=pix.pop("pixel_threshold"),
                    pixel=pix,
                    band_rule={"rule": "logit half-width max(w_frac, w_quant)", "band_frac": cfg.band_frac,
                               "w_frac": w_frac, "w_quant": w_quant, "compare": cfg.compare, "flips": flips, "dz_max": dz_max,
                               "model_sha256": sha, "data": str(cfg.data), "overlap": overlap,
                               "created": utc_now()})
    out = Path(cfg.out) if cfg.out else default_out
    if out.suffix != ".json":
        out = out / "thresholds.json"
    write_json(out, th.to_json())
    return th, out
