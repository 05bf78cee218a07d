"""`defaker calibrate build|thresholds`."""

from __future__ import annotations

import argparse
import json

BUILD_DESC = """\
Build a calibration set for quantization: native-resolution tiles (never resized; origins on the
8x8 JPEG grid, the runtime's tiling), stratified by domain and by label (half real, half fake per
domain), deterministic for --seed. Fake images with a mask give tiles that overlap the manipulation
first. Written as shards calib-NNNNN.npz + manifest.json (counts per domain, sha256 of every source).
Warns when a domain is missing or has fewer tiles than its quota. Uses the train split of the
manifest when it has splits (--split), so held-out images stay held out."""

THR_DESC = """\
Calibrate the decision rule on held-out images (split val, else test): temperature scaling of the
image logit (max over tiles), the threshold at --target-fpr on the scaled probability, and the
uncertainty band [lo, hi] inside which the runtime re-runs an image at full precision (with --compare
Q.onnx: where FP32 would change Q's decision at least --band-flip-rate of the time, and the re-run margin:
which tiles a band re-run runs again; without: the --band-frac share of images nearest the threshold),
and the pixel threshold that turns the heatmap into the binary
mask (--pixel-rule). Writes thresholds.json into the model dir (or --out); export
copies it into the package manifest."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="calibration sets (build) and decision thresholds (thresholds)",
                       description="Calibration: `build` a calibration set, or fit `thresholds`.")
    csub = p.add_subparsers(dest="calib_cmd", metavar="SUBCOMMAND", required=True)

    b = csub.add_parser("build", help="build a calibration set of native-resolution tiles",
                        description=BUILD_DESC, formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example: defaker calibrate build --data data/train/manifest.jsonl --out C --per-domain 128")
    b.add_argument("--data", required=True, help="dataset: manifest.jsonl or folder")
    b.add_argument("--out", required=True, help="output dir")
    b.add_argument("--n", type=int, default=512, help="total tiles (quota n/4 per domain; default 512)")
    b.add_argument("--per-domain", type=int, help="tiles per domain (overrides --n)")
    b.add_argument("--tile", type=int, default=512, help="tile size in pixels (the model's input; default 512)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--split", default="train", help="manifest split to draw from; 'all' for every sample")
    b.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    b.set_defaults(func=run_build)

    t = csub.add_parser("thresholds", help="temperature, threshold at a target FPR, full-precision band",
                        description=THR_DESC, formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example: defaker calibrate thresholds --model models/default-student "
                               "--data data/val/manifest.jsonl --compare Q8/model.onnx")
    t.add_argument("--model", required=True, help="student dir, .onnx file, or a quantize output dir")
    t.add_argument("--data", required=True, help="dataset with a held-out split")
    t.add_argument("--split", help="held-out split (default val, else test)")
    t.add_argument("--target-fpr", type=float, default=0.05, help="false-positive rate on real images (default 0.05)")
    t.add_argument("--band-frac", type=float, default=0.10,
                   help="share of held-out images nearest the threshold inside the band (default 0.10)")
    t.add_argument("--compare", help="the quantized ONNX the runtime answers with: fit the band (and the re-run "
                                     "margin) to where its decision differs from --model's")
    t.add_argument("--band-flip-rate", type=float, default=1 / 3,
                   help="with --compare: re-run where FP32 changes the quantized decision at least this often "
                        "(default 1/3; smaller: a wider band, more re-runs)")
    t.add_argument("--pixel-rule", choices=("fpr", "f1"), default="fpr",
                   help="the binary mask's cut on the heatmap: fpr = the lowest cut that marks at most --pixel-fpr "
                        "of an authentic image's pixels (default), f1 = the best mean pixel F1 on the split's "
                        "manipulated images, whatever it marks on authentic ones")
    t.add_argument("--pixel-fpr", type=float, default=0.05,
                   help="share of an authentic image's pixels the binary mask may mark (default 0.05)")
    t.add_argument("--out", help="output file or dir (default: <model dir>/thresholds.json)")
    t.add_argument("--overlap", type=int,
                   help="tile overlap in px the images are scored at (default min(64, tile/4): 64 at 512). "
                        "The package must use the same (`defaker export --overlap`): the threshold is fitted on "
                        "max-aggregated tile logits, which depend on the tiling")
    t.add_argument("--json", action="store_true", help="print thresholds.json on stdout")
    t.set_defaults(func=run_thresholds)


def run_build(args: argparse.Namespace) -> int:
    from . import CalibConfig, build_calibration

    res = build_calibration(CalibConfig(data=args.data, out=args.out, n=args.n, per_domain=args.per_domain,
                                        tile=args.tile, seed=args.seed,
                                        split=None if args.split == "all" else args.split))
    if args.json:
        print(json.dumps({"out": str(res.out), "n": res.n, "counts": res.counts, "sha256": res.sha256,
                          "warnings": res.warnings}))
    else:
        per = ", ".join(f"{d} {c['total']}" for d, c in res.counts.items())
        print(f"{res.out}: {res.n} tiles ({per}); sha256 {res.sha256[:12]}")
    return 0


def run_thresholds(args: argparse.Namespace) -> int:
    from . import ThresholdConfig, calibrate_thresholds

    th, path = calibrate_thresholds(ThresholdConfig(model=args.model, data=args.data, target_fpr=args.target_fpr,
                                                    split=args.split, out=args.out, band_frac=args.band_frac,
                                                    compare=args.compare, overlap=args.overlap,
                                                    band_flip_rate=args.band_flip_rate,
                                                    pixel_rule=args.pixel_rule, pixel_fpr=args.pixel_fpr))
    if args.json:
        print(json.dumps(th.to_json()))
    else:
        m = th.measured
        print(f"{path}: T={th.temperature:.3f} threshold={th.threshold:.4f} band=[{th.band[0]:.4f}, {th.band[1]:.4f}] "
              f"fpr={m['fpr']:.3f} tpr={m['tpr']:.3f} (n={m['n']})")
    return 0
