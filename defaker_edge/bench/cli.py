"""`defaker bench`: latency x accuracy x robustness of a package (standard library only at import)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
examples:
  quick look (few runs, some images):
    defaker bench --package models/default --data data/test/manifest.jsonl --out R --runs 10 --limit 40
  the full report, with the real-size teacher (minutes per teacher run on a CPU) and robustness:
    defaker bench --package models/default --data M --out R --teacher-preset defakerone-2b \\
        --random-weights --teacher-runs 3 --robustness
  compare with an earlier report (e.g. another machine):
    defaker bench --package models/default --data M --out R2 --compare R/report.json

writes OUT/report.json (schema: bench/README.md), OUT/report.md, OUT/pareto.png and, with
--robustness, OUT/robustness.png. Rows that cannot run on this machine (no GPU provider, an ORT
build without FP8 kernels) say why instead of giving a number. Every speedup is a ratio of two
rows of the same run.
"""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency, accuracy and robustness of a package -> report.json/.md + plots",
                       description="Benchmark every model file of a package on this machine: latency "
                                   "(p50/p90/p99 per 1024x1024 image and per tile, throughput, peak memory, size), "
                                   "accuracy per variant (AUC, balanced accuracy, pixel F1/IoU, agreement with FP32 "
                                   "and the teacher) and, optionally, robustness to JPEG/blur/noise/resize. FP32 and "
                                   "the CPU INT8 file are also timed in turns in one process, so their ratio survives "
                                   "a shared CPU's drift; each timed row records how much CPU other processes took.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", required=True, help="package directory (manifest.json + model files)")
    p.add_argument("--data", help="dataset (manifest.jsonl or folder) for accuracy; without it, latency only")
    p.add_argument("--out", required=True, help="output directory for report.json, report.md and plots")
    p.add_argument("--split", help="only this manifest split (e.g. test)")
    p.add_argument("--limit", type=int, help="at most N images (in dataset order)")
    p.add_argument("--backends", type=_csv, help="comma list of ort-cpu, ort-cuda, ort-trt, tensorrt "
                   "(default: every ONNX Runtime provider this machine has)")
    p.add_argument("--precisions", type=_csv, help="only these variants, e.g. fp32,int8-cpu (default: all files)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per variant after warm-up (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs (default 5)")
    p.add_argument("--batches", type=lambda s: tuple(int(x) for x in _csv(s)), default=(1, 2, 4, 8),
                   help="batch sizes (tiles) for throughput, best one reported (default 1,2,4,8)")
    p.add_argument("--image-size", type=int, default=1024, help="side of the timed square image (default 1024)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default 0: all cores)")
    t = p.add_argument_group("teacher")
    t.add_argument("--teacher", help="teacher directory (or 'reference'): timed and scored on the same images")
    t.add_argument("--teacher-preset", help="a teacher preset timed at real size, e.g. defakerone-2b "
                   "(needs --random-weights; accuracy is N/A)")
    t.add_argument("--random-weights", action="store_true", help="accept random weights for --teacher-preset")
    t.add_argument("--teacher-runs", type=int, default=3, help="timed teacher runs (default 3; minutes each at "
                   "real size on a CPU)")
    t.add_argument("--teacher-warmup", type=int, default=0, help="untimed teacher runs first (default 0: a run "
                   "takes minutes, and the median of 3 runs already leaves out the cold first one)")
    t.add_argument("--teacher-dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="teacher weights' dtype (default fp32; bf16 halves memory but is slow on CPUs "
                        "without bf16 units)")
    t.add_argument("--teacher-device", default="cpu", help="torch device for the teacher (default cpu)")
    t.add_argument("--teacher-timeout", type=float, default=7200.0, help="seconds before the teacher job is "
                   "abandoned (its row then says so)")
    r = p.add_argument_group("robustness")
    r.add_argument("--robustness", action="store_true", help="also score JPEG / blur / noise / resize")
    r.add_argument("--robustness-levels", help="e.g. 'jpeg=100,70,50;blur=3,11,23;noise=3,23;resize=0.5,1.5' "
                   "(default: 4 levels each over IMDLBenCo's ranges)")
    r.add_argument("--robustness-variants", type=_csv, help="variants to perturb (default: fp32 and the CPU INT8)")
    r.add_argument("--robustness-limit", type=int, help="perturb only the first N images (default: all; each "
                   "level re-runs every image)")
    p.add_argument("--compare", help="an earlier report.json: print p50 ratios and AUC deltas per variant")
    p.add_argument("--no-detector", action="store_true", help="score accuracy with the bench's own ONNX adapter "
                   "instead of the runtime's Detector")
    p.add_argument("--no-plots", action="store_true", help="skip pareto.png / robustness.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print report.json on stdout (nothing else there)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DefakerError
    from . import BenchConfig, run_bench
    from .compare import compare_text
    from .robustness import parse_levels

    try:
        levels = parse_levels(args.robustness_levels) if args.robustness_levels else None
    except ValueError as e:
        raise DefakerError(str(e)) from None
    cfg = BenchConfig(
        package=Path(args.package), out=Path(args.out), data=Path(args.data) if args.data else None,
        split=args.split, limit=args.limit, backends=args.backends, precisions=args.precisions, runs=args.runs,
        warmup=args.warmup, batches=tuple(args.batches), image_size=args.image_size, threads=args.threads,
        teacher=args.teacher, teacher_preset=args.teacher_preset, random_weights=args.random_weights,
        teacher_runs=args.teacher_runs, teacher_warmup=args.teacher_warmup, teacher_dtype=args.teacher_dtype,
        teacher_device=args.teacher_device, teacher_timeout_s=args.teacher_timeout, robustness=args.robustness,
        robustness_levels=levels, robustness_variants=args.robustness_variants,
        robustness_limit=args.robustness_limit,
        compare=Path(args.compare) if args.compare else None, prefer_detector=not args.no_detector,
        seed=args.seed, plots=not args.no_plots)
    rep = run_bench(cfg)
    if args.json:
        json.dump(rep.data, sys.stdout)
        sys.stdout.write("\n")
    else:
        print((rep.out / "report.md").read_text(encoding="utf-8"))
    if rep.data.get("compare"):
        print(compare_text(rep.data["compare"]), file=sys.stderr if args.json else sys.stdout)
    print("wrote " + ", ".join(str(p) for p in rep.files.values()), file=sys.stderr)
    return 0
