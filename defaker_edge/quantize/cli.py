"""`defaker quantize`: Q/DQ ONNX at INT8 / FP8 / CPU-INT8, refused when it loses too much accuracy."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Post-training quantization of a student to a Q/DQ ONNX file, behind an accuracy gate.

precisions:
  int8      ModelOpt INT8 (per-channel weights, max calibration), exported with Q/DQ nodes for
            TensorRT (ORT runs it too)
  fp8       ModelOpt ONNX FP8 E4M3 Q/DQ from the FP32 ONNX (TensorRT on compute capability >= 8.9)
  int8-cpu  ONNX Runtime static INT8 (S8 per-channel weights, U8 activations, QDQ) for CPUs;
            the speed ratio against FP32 ORT on the same tiles is measured and recorded

The gate scores the FP32 and the quantized ONNX with ONNX Runtime on the held-out split of --data
(default: the calibration set's source manifest, split val, else test): full images, native-resolution
tiles, max-aggregated logits. A model whose image AUC or pixel F1 differs from FP32 by more than
--budget-auc / --budget-f1 (either way: a "gain" on held-out data is the model drifting too) is not
written (exit 2) unless --force. --auto-exclude ranks layers by how much each one alone moves
the outputs when quantized and keeps the fewest most sensitive ones in FP32 that pass.
"""

EPILOG = """\
examples:
  defaker quantize --model models/default-student --calib C --precision int8 --out Q8
  defaker quantize --model S --calib C --precision int8-cpu --data data/val/manifest.jsonl --out QCPU
  defaker quantize --model S --calib C --precision int8 --auto-exclude --out Q8
  defaker quantize --model S --calib C --precision fp8 --exclude 'head' --out QF8
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="INT8 / FP8 / CPU-INT8 Q/DQ ONNX behind an accuracy gate",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="student dir (config.json + model.safetensors)")
    p.add_argument("--calib", required=True, help="calibration set dir (defaker calibrate build)")
    p.add_argument("--precision", required=True, choices=["int8", "fp8", "int8-cpu"])
    p.add_argument("--out", required=True, help="output dir: model.onnx, model_fp32.onnx, manifest.json")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="keep layers whose module name matches REGEX in FP32 (repeatable)")
    p.add_argument("--auto-exclude", action="store_true",
                   help="if the gate fails, keep the fewest most-sensitive layers in FP32 that pass")
    p.add_argument("--budget-auc", type=float, default=0.005, help="max |image-AUC change| vs FP32 (default 0.005)")
    p.add_argument("--budget-f1", type=float, default=0.01, help="max |pixel-F1 change| vs FP32 (default 0.01)")
    p.add_argument("--data", help="held-out data for the gate (manifest.jsonl); default: the calibration source")
    p.add_argument("--split", help="held-out split(s) of --data, e.g. val or val,test (default val, else test)")
    p.add_argument("--force", action="store_true", help="write the model even if it fails the gate")
    p.add_argument("--calib-n", type=int, help="use N calibration tiles (a seeded mix of all domains; default all)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for the gate's evaluation (default: all)")
    p.add_argument("--bench-threads", type=int, default=1,
                   help="ONNX Runtime threads when timing int8-cpu against FP32 (default 1)")
    p.add_argument("--float-input", action="store_true",
                   help="int8-cpu: keep the normalized float input and its full-resolution front end in FP32 "
                        "(default: uint8 pixels in, the front end in INT8 too; on the 2-core dev VM a tile ran "
                        "~1.35x faster than with the float input)")
    p.add_argument("--overlap", type=int,
                   help="tile overlap in px the gate scores full images at (default min(64, tile/4): 64 at 512; "
                        "use the package's, see `defaker export --overlap`)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import QuantConfig, quantize

    cfg = QuantConfig(precision=args.precision, out=args.out, exclude=list(args.exclude),
                      auto_exclude=args.auto_exclude, budget_auc=args.budget_auc, budget_f1=args.budget_f1,
                      data=args.data, split=args.split, force=args.force, calib_n=args.calib_n,
                      threads=args.threads, bench_threads=args.bench_threads, raw_input=not args.float_input,
                      overlap=args.overlap)
    res = quantize(args.model, args.calib, cfg)
    if args.json:
        print(json.dumps(res.manifest))
    else:
        d = res.deltas
        fmt = lambda v: "n/a" if v is None else f"{v:+.4f}"  # noqa: E731
        line = (f"{res.precision}: {res.onnx}  dAUC {fmt(d.get('image_auc'))}  d pixel F1 {fmt(d.get('pixel_f1'))}"
                f"  gate {'passed' if res.passed else 'not run' if res.passed is None else 'FAILED (forced)'}"
                f"  FP32 layers: {len(res.excluded_layers)}")
        sp = res.manifest.get("speed")
        if sp:
            line += f"  speed {sp['ratio']:.2f}x vs FP32 ORT"
        print(line)
    return 0
