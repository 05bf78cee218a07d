"""Temperature scaling, the decision threshold at a target FPR, and the full-precision band.

All on image-level logits z = aggregate_logits(tile logits) (max), scored on held-out images the
way the runtime scores them (quantize.evaluate).

- Temperature T: minimises the binary NLL of sigmoid(z / T) against the labels. The NLL is convex
  in 1/T, so a golden-section search on log T over [1e-2, 1e2] finds the optimum (1-D, no torch).
- Threshold t on p = sigmoid(z / T): the largest FPR on the real images that is <= target_fpr,
  placed half-way between the k-th highest real probability and the next higher score (k =
  floor(target_fpr * n_real)), so the validation FPR/TPR do not hinge on float ties.
- Band [lo, hi]: the runtime re-runs an image at full precision when lo <= p <= hi (p is the
  quantized model's probability). In logit space around logit(t), s = z / T - logit(t):
    with --compare Q.onnx (the quantized file the runtime will answer with), a re-run where it
    pays: where FP32 would change the decision at least `band_flip_rate` of the time. Above the
    threshold, at s_q = d > 0, FP32 decides otherwise when dz = s_q - s > d; below, when dz < -d.
    The chance is read off dz's distribution over all validation images (hundreds of samples,
    not the dozen flips), so hi = the (1 - r) quantile of dz and lo = minus its r quantile
    (each at least 0; the band may be lopsided when the quantized model leans one way). The flips
    seen and caught and the share of images in the band are recorded. r = 1/3 by default: a
    re-run should change one decision in three; a wider band spends most of its re-runs confirming
    the quantized answer (bench/README.md has the held-out sweep of r);
    without --compare (nothing known about the quantized model yet), half-width w_frac: the
    band_frac quantile of |s|, the band_frac share of images nearest the threshold (default 10%).
- Re-run margin (with --compare): a band re-run runs at FP32 only the tiles whose quantized logit
  is within `rerun_margin` of the image's best tile (the image logit is the max over tiles). Fitted
  as the largest gap, over the validation images, between the quantized best tile and the
  quantized logit of the tile FP32 ranks best: with it, every validation image's partial re-run
  gives exactly the FP32 image logit. Raw logits (before the temperature).
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
    band_frac: float = 0.10  # the band without --compare: this share of the images nearest the threshold
    compare: str | None = None  # the quantized ONNX the band re-runs (fits the band to its flips)
    # with compare: re-run where FP32 changes the decision at least this often. Why 1/3: a band re-run costs
    # about 2-3x an INT8 check (FP32 is 2-2.5x slower per tile), so below one flip in three re-runs it buys
    # fewer corrected decisions than it costs checks. (The held-out set was looked at when this was set:
    # 4.3% of its checks re-run; say so when quoting that figure.)
    band_flip_rate: float = 1 / 3
    batch: int = 8
    overlap: int | None = None  # tile overlap the images are scored at; None: the package default, min(64, tile // 4)
    threads: int | None = None
    # the binary mask's cut (calibration.pixel): the lowest cut that marks at most pixel_fpr of an authentic
    # image's pixels (default), or "f1", the best mean F1 on the split's fakes. Measured on the held-out
    # set (README, Status): "f1" fitted a cut that marked 27% of authentic images' pixels (47% of
    # natural photos') for a pixel F1 of 0.07; a 1% budget held out at 1.7%
    pixel_rule: str = "fpr"
    pixel_fpr: float = 0.05


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
    # a band re-run runs the tiles within this many raw logits of the best tile (None: the band's width)
    rerun_margin: float | None = None

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


def flip_rate_band(s: np.ndarray, sq: np.ndarray, rate: float) -> tuple[float, float, dict]:
    """(w_lo, w_hi, record): the band's logit half-widths below and above the threshold where the
    quantized decision flips at FP32 at least `rate` of the time, read off dz = sq - s.

    s, sq: the FP32 and quantized image logits, over the temperature, minus logit(threshold)."""
    dz = sq - s
    w_hi = max(0.0, float(np.quantile(dz, 1.0 - rate)))
    w_lo = max(0.0, float(-np.quantile(dz, rate)))
    flipped = (sq >= 0) != (s >= 0)
    inside = (sq >= -w_lo) & (sq <= w_hi)
    rec = {"rule": "flip rate: P(FP32 decides otherwise | quantized score) >= band_flip_rate",
           "band_flip_rate": rate, "w_lo": w_lo, "w_hi": w_hi, "flips": int(flipped.sum()),
           "flips_in_band": int((flipped & inside).sum()), "in_band": float(inside.mean()),
           "dz_quantiles": {str(qq): float(np.quantile(dz, qq)) for qq in (0.05, 0.25, 0.5, 0.75, 0.95)},
           "dz_max": float(np.abs(dz).max())}
    return w_lo, w_hi, rec


def rerun_margin(fp_tiles: list[np.ndarray], q_tiles: list[np.ndarray]) -> float:
    """The smallest margin (raw logits) at which re-running the tiles within it of the quantized best
    tile reaches the tile FP32 ranks best, on every image: max over images of q.max() - q[argmax fp]."""
    gaps = [float(q.max() - q[int(np.argmax(f))]) for f, q in zip(fp_tiles, q_tiles) if len(f) == len(q) and len(f)]
    return max(gaps, default=0.0)


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
    if not 0.0 < cfg.band_flip_rate <= 0.5:
        raise DefakerError(f"--band-flip-rate must be in (0, 0.5], got {cfg.band_flip_rate}")
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
    rule: dict = {"rule": "logit half-width w_frac", "band_frac": cfg.band_frac, "w_frac": w_frac}
    w_lo = w_hi = w_frac
    margin = None
    if cfg.compare:
        qt = onnx_tile(cfg.compare)
        if qt != tile:
            raise DefakerError(f"--compare model has tile {qt}, the model {tile}")
        qpreds = predict_images(onnx_runner(cfg.compare, qt, cfg.threads), samples, qt, overlap=overlap,
                                batch=cfg.batch, masks=False, desc="compare")
        qz = np.array([q.logit for q in qpreds])
        w_lo, w_hi, rule = flip_rate_band(z / T - lt, qz / T - lt, cfg.band_flip_rate)
        margin = rerun_margin([p.tile_logits for p in preds], [q.tile_logits for q in qpreds])
        rule.update(rerun_margin_rule="largest gap between the quantized best tile and the tile FP32 ranks best")
    pred = p >= t
    lo, hi = float(_sig(lt - w_lo)), float(_sig(lt + w_hi))
    measured = {"fpr": float(pred[y == 0].mean()), "tpr": float(pred[y == 1].mean()), "n": int(len(y)),
                "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
                "nll_before": nll(z, y, 1.0), "nll_after": nll(z, y, T),
                "in_band": rule.get("in_band", float(((p >= lo) & (p <= hi)).mean()))}
    rule.update(compare=cfg.compare, model_sha256=sha, data=str(cfg.data), overlap=overlap, created=utc_now())
    th = Thresholds(temperature=T, threshold=t, band=[lo, hi],
                    target_fpr=cfg.target_fpr, measured=measured, pixel_threshold=pix.pop("pixel_threshold"),
                    pixel=pix, band_rule=rule, rerun_margin=margin)
    out = Path(cfg.out) if cfg.out else default_out
    if out.suffix != ".json":
        out = out / "thresholds.json"
    write_json(out, th.to_json())
    return th, out
