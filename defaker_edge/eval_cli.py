"""`defaker eval`: score a predictions JSONL against a dataset with the one metrics implementation."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="score predictions against a dataset (AUC, balanced acc, pixel F1/IoU)",
        description="Score a predictions file against a dataset. Each predictions line is "
                    '{"image": <path as in the manifest>, "fake_prob": float, "mask": <PNG path or null>, '
                    '"heatmap": <PNG path>, "pixel_threshold": float} (what `defaker check --json --mask-dir` '
                    "prints). Where a line names a heatmap (probabilities 0..255 at the image's size), pixel F1 "
                    "and IoU are at its pixel_threshold (the package's cut) and best-cut F1 and pixel AUC come "
                    "from it; else the mask PNG is scored at 0.5. Paths are relative to the predictions file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--predictions", required=True, help="predictions JSONL")
    p.add_argument("--data", required=True, help="dataset: manifest.jsonl or folder")
    p.add_argument("--out", help="write the report JSON here (also printed on stdout)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold for balanced accuracy")
    p.add_argument("--split", help="only score samples of this manifest split")
    p.add_argument("--pixel-threshold", type=float,
                   help="cut the heatmaps here instead of at each line's pixel_threshold (compare pixel rules)")
    p.add_argument("--markdown", help="also write a markdown table (overall, per domain, per domain x kind) here")
    p.add_argument("--scores-out", help="also write the per-image scores here, in the held-out score format "
                   "(`defaker train compare` / `train chain` read it: a package as a stage of the chain)")
    p.set_defaults(func=run)


def evaluate_predictions(predictions: str | os.PathLike, data: str | os.PathLike, *,
                         threshold: float = 0.5, split: str | None = None,
                         pixel_threshold: float | None = None, images: list | None = None) -> dict:
    """The metrics report; `images`, when given, receives each image's scores (the held-out score format)."""
    import numpy as np

    from .data.dataset import load_dataset
    from .data.io import load_mask
    from .errors import DatasetError
    from .metrics import Record, pixel_scores, summarize

    samples = load_dataset(data, split=split)
    ppath = Path(predictions)
    if not ppath.is_file():
        raise DatasetError(f"{ppath}: predictions file not found")
    proot = ppath.parent.resolve()
    preds: dict[str, dict] = {}
    problems = []
    for n, line in enumerate(ppath.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            fp = float(d["fake_prob"])
            if not (0.0 <= fp <= 1.0):
                raise ValueError(f"fake_prob {fp} outside [0, 1]")
            preds[str(d["image"])] = d
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            problems.append(f"line {n}: {e}")
    if problems:
        raise DatasetError(f"{ppath}: bad lines:\n  " + "\n  ".join(problems[:20]))
    from .data.io import load_dataset_image

    def predicted(d: dict) -> tuple[np.ndarray | None, float]:
        """The heatmap (probabilities) where the line names one, cut at the line's pixel threshold (F1 at
        the shipped cut, best-cut F1 and pixel AUC from one file); else the mask PNG at 0.5 (a binary
        mask: the cut it was made at); (None, 0.5) when the line has neither."""
        key = "heatmap" if d.get("heatmap") else "mask" if d.get("mask") else None
        if key is None:
            return None, 0.5
        mp = Path(d[key])
        mp = mp if mp.is_absolute() else proot / mp
        cut = 0.5 if key != "heatmap" else (
            pixel_threshold if pixel_threshold is not None else float(d.get("pixel_threshold", 0.5)))
        return load_dataset_image(mp)[:, :, 0], cut

    records = []
    missing = []
    cuts: set[float] = set()  # the cuts the heatmaps were judged at (one, for a package's predictions)
    false_marks: dict[str, list[float]] = {}  # domain -> per authentic image, the share of pixels marked
    for s in samples:
        d = preds.get(s.key) or preds.get(s.image) or preds.get(os.path.basename(s.image))
        if d is None:
            missing.append(s.key or s.image)
            continue
        pix = None
        if s.label == 1 and s.mask:
            gt, _ = load_mask(s.mask)
            pm, cut = predicted(d)
            if pm is not None:
                cuts.add(cut)
                if pm.shape != gt.shape:
                    raise DatasetError(f"{d.get('heatmap') or d.get('mask')}: predicted mask is "
                                       f"{pm.shape[1]}x{pm.shape[0]}, ground truth is {gt.shape[1]}x{gt.shape[0]}")
                pix = pixel_scores(pm, gt, threshold=cut)
            else:  # no mask predicted
                pix = {"pixel_f1": 0.0, "pixel_f1_best": 0.0, "pixel_iou": 0.0, "pixel_auc": 0.5}
        elif s.label == 0:
            pm, cut = predicted(d)
            if pm is not None:  # what the binary mask wrongly marks on an untouched image
                false_marks.setdefault(s.domain, []).append(float((pm.astype(np.float64) / 255.0 >= cut).mean()))
        records.append(Record(label=s.label, fake_prob=float(d["fake_prob"]), domain=s.domain, pixel=pix,
                              kind=s.kind))
        if images is not None:
            images.append({"key": s.key, "label": int(s.label), "domain": s.domain, "kind": s.kind,
                           "fake_prob": float(d["fake_prob"]), "pixel": pix})
    if missing:
        raise DatasetError(f"{len(missing)} dataset image(s) have no prediction, e.g.: " + ", ".join(missing[:5]))
    report = summarize(records, threshold)
    # the pixel cut every fake's mask was scored at (null: none, or lines with different cuts)
    report["pixel_cut"] = cuts.pop() if len(cuts) == 1 else None
    # the pixel false-positive rate on authentic images: the cost side of the pixel cut
    if false_marks:
        report["overall"]["pixel_fpr_authentic"] = float(np.mean([v for vs in false_marks.values() for v in vs]))
        for dom, vs in false_marks.items():
            report["per_domain"].setdefault(dom, {})["pixel_fpr_authentic"] = float(np.mean(vs))
    return report


COLUMNS = ("n_fake", "n_real", "image_auc", "balanced_acc", "pixel_f1", "pixel_f1_best", "pixel_iou", "pixel_auc",
           "pixel_fpr_authentic")


def markdown_table(report: dict) -> str:
    """One row per slice: overall, each domain, then each domain x kind (that kind vs the domain's reals)."""
    def cell(v):
        return "-" if v is None or (isinstance(v, float) and v != v) else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = [("all", "all", report["overall"])]
    for d, s in report.get("per_domain", {}).items():
        rows.append((d, "all", s))
        rows += [(d, k, ks) for k, ks in report.get("per_kind", {}).get(d, {}).items()]
    lines = ["| domain | kind | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    lines += [f"| {d} | {k} | " + " | ".join(cell(s.get(c)) for c in COLUMNS) + " |" for d, k, s in rows]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from .artifacts import to_jsonable, write_json

    if args.pixel_threshold is not None and not 0.0 < args.pixel_threshold < 1.0:
        from .errors import DefakerError

        raise DefakerError(f"--pixel-threshold must be in (0, 1), got {args.pixel_threshold}")
    images: list | None = [] if args.scores_out else None
    report = evaluate_predictions(args.predictions, args.data, threshold=args.threshold, split=args.split,
                                  pixel_threshold=args.pixel_threshold, images=images)
    if args.scores_out:
        write_json(args.scores_out, {"step": None, "predictions": str(args.predictions), "pixel_cut": report["pixel_cut"],
                                     "weights_sha256": None, "heldout": str(args.data), "images": images})
    if args.out:
        write_json(args.out, report)
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(report))
    json.dump(to_jsonable(report), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
