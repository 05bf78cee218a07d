"""`defaker export`, `defaker package verify`, `defaker engine build|plan` (standard library at import time)."""

from __future__ import annotations

import argparse
import json
import sys

_PRECISIONS = ("fp16", "int8", "fp8")
_TARGETS = ("orin", "ampere", "ada", "hopper", "auto")

EXPORT_EPILOG = """\
What it does:
  1. exports the FP32 student to ONNX (input `image` [B,3,T,T], batch dynamic; outputs fake_logit, mask_logits)
  2. onnx.checker full check, compares ONNX Runtime with PyTorch on random and real tiles (max/mean |diff|;
     fails above atol + rtol*max|output|), simplifies with onnxslim and validates again
  3. copies each --quantized dir's model.onnx (int8, int8-cpu, fp8) into the package
  4. runs every ONNX file on one fixed real tile -> golden.npz (the runtime's load-time self-test)
  5. writes manifest.json (files + sha256, thresholds, calibration hash, teacher id, metrics, tools)
     and verifies the package before moving it into place

Example:
  defaker export --model runs/student --quantized runs/q-int8 runs/q-int8-cpu runs/q-fp8 \\
      --data data/val/manifest.jsonl --out models/default
"""

ENGINE_EPILOG = """\
Rules: fp8 needs compute capability >= 8.9 (ada, hopper); --dla only on orin (sm_87) with TensorRT <= 10.7
or >= 11.4, fp16/int8. TensorRT 10 uses precision flags + the Q/DQ ONNX; TensorRT 11 builds strongly typed
(fp16 via ModelOpt AutoCast of the FP32 ONNX, int8/fp8 from the Q/DQ ONNX). Engines only run on the GPU
and TensorRT version that built them, so run this on the device. `defaker engine plan` prints the decisions
without TensorRT.

Example (on a Jetson Orin):  defaker engine build --package models/default --target orin --precision int8 \\
    --timing-cache ~/.cache/defaker/orin.cache
"""


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("export", help="student (+ quantized ONNX) -> validated, self-describing package",
                       description="Export the FP32 student and its quantized variants into a package directory.",
                       epilog=EXPORT_EPILOG, formatter_class=fmt)
    p.add_argument("--model", required=True, help="student dir (config.json + model.safetensors [+ thresholds.json])")
    p.add_argument("--quantized", nargs="*", default=[], metavar="DIR",
                   help="quantize output dirs (model.onnx + manifest.json), any of int8 / int8-cpu / fp8")
    p.add_argument("--out", required=True, help="package dir to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--tile", type=int, help="input tile T (default: the student's)")
    p.add_argument("--data", help="dataset manifest: real tiles for validation and the golden input "
                                  "(default: the bundled photos in defaker_edge/assets/photos)")
    p.add_argument("--atol", type=float, default=1e-3, help="validation tolerance: atol + rtol*max|output|")
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--overlap", type=int,
                   help="tile overlap in px (default: what the student's thresholds.json was calibrated at, else "
                        "min(64, tile/4)). Less overlap, fewer tiles: 0 cuts a 1024² image into 4 tiles of 512 "
                        "instead of 9, about 2x faster, with unblended seams; calibrate thresholds at it first")
    p.add_argument("--force", action="store_true", help="replace an existing package at --out")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run_export)

    pk = sub.add_parser("package", help="package tools (verify)", description="Package tools.")
    psub = pk.add_subparsers(dest="package_command", metavar="SUBCOMMAND")
    v = psub.add_parser("verify", help="check a package: schema, sha256, ONNX I/O, golden outputs, thresholds",
                        description="Check everything a package's manifest claims; name each failing file. "
                                    "Exit 0 when it passes, 1 when it does not.")
    v.add_argument("package", help="package dir")
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    v.add_argument("--no-golden", action="store_true", help="skip re-running the golden input")
    v.set_defaults(func=run_verify)

    en = sub.add_parser("engine", help="TensorRT engines (build, plan)", description="TensorRT engines.")
    esub = en.add_subparsers(dest="engine_command", metavar="SUBCOMMAND")
    b = esub.add_parser("build", help="build a TensorRT engine into PACKAGE/engines/ (on the target device)",
                        description="Build a TensorRT engine from the package's ONNX and record it in the manifest.",
                        epilog=ENGINE_EPILOG, formatter_class=fmt)
    _engine_args(b)
    b.add_argument("--package", required=True, help="package dir (written by `defaker export`)")
    b.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache: loaded if it exists, saved after")
    b.add_argument("--workspace", type=int, metavar="MB", help="workspace memory pool limit in MiB")
    b.set_defaults(func=run_engine_build)
    pl = esub.add_parser("plan", help="print what `engine build` would do, without TensorRT",
                         description="Print the build plan (flags, typing, source ONNX, profile) for given versions.",
                         epilog=ENGINE_EPILOG, formatter_class=fmt)
    _engine_args(pl)
    pl.add_argument("--trt-version", required=True, help="TensorRT version, e.g. 10.3 or 11.4")
    pl.add_argument("--cc", help="compute capability, e.g. 8.7 (default: the target's)")
    pl.add_argument("--tile", type=int, default=512)
    pl.set_defaults(func=run_engine_plan)


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=_TARGETS, default="auto", help="GPU family (auto: the GPU present)")
    p.add_argument("--precision", choices=_PRECISIONS, default="fp16")
    p.add_argument("--dla", type=int, metavar="N", help="run on DLA core N (Orin only), GPU fallback on")
    p.add_argument("--batch-max", type=int, default=8, help="largest batch (tiles) of the optimization profile")
    p.add_argument("--batch-opt", type=int, help="batch the profile is tuned for (default min(4, batch-max))")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run_export(args: argparse.Namespace) -> int:
    from .package import ExportConfig, export_package

    pkg = export_package(ExportConfig(model=args.model, out=args.out, quantized=list(args.quantized), opset=args.opset,
                                      tile=args.tile, data=args.data, atol=args.atol, rtol=args.rtol,
                                      simplify=not args.no_simplify, force=args.force, overlap=args.overlap))
    m = pkg.manifest
    if args.json:
        print(json.dumps({"package": str(pkg.path), "model_id": m["model_id"],
                          "files": [{k: f[k] for k in ("path", "precision", "bytes", "sha256")} for f in m["files"]],
                          "validation": pkg.validation}))
    else:
        print(f"wrote {pkg.path} ({m['model_id']})")
        for f in m["files"]:
            print(f"  {f['path']:24s} {f['precision']:8s} {f['bytes'] / 1e6:8.2f} MB")
        for kind, per in pkg.validation.get("simplified", pkg.validation.get("export", {})).get("diffs", {}).items():
            print("  onnx vs torch (" + kind + "): " + ", ".join(
                f"{o} max {d['max_abs']:.2e} mean {d['mean_abs']:.2e}" for o, d in per.items()))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from .package import verify_package

    rep = verify_package(args.package, golden=not args.no_golden)
    if args.json:
        print(json.dumps(rep.to_json()))
    elif rep.ok:
        print(f"{args.package}: OK ({len(rep.checked)} files checked)")
    else:
        print(f"{args.package}: FAILED; failing files: {', '.join(rep.failing_files)}")
        for p in rep.problems:
            print(f"  {p}")
    if not rep.ok and args.json:
        print(f"defaker: package verify failed: {', '.join(rep.failing_files)}", file=sys.stderr)
    return 0 if rep.ok else 1


def run_engine_build(args: argparse.Namespace) -> int:
    from .trt_builder import build_package_engine

    res = build_package_engine(args.package, args.target, args.precision, workspace_mb=args.workspace,
                               timing_cache=args.timing_cache, dla=args.dla, batch_max=args.batch_max,
                               batch_opt=args.batch_opt)
    if args.json:
        print(json.dumps({"engine": str(res.path), "entry": res.entry, "plan": res.plan.to_json()}))
    else:
        print(f"wrote {res.path} (TensorRT {res.plan.trt_version}, sm {res.plan.compute_capability}, "
              f"{res.plan.precision}{'' if res.plan.dla_core is None else f', DLA {res.plan.dla_core}'})")
    return 0


def run_engine_plan(args: argparse.Namespace) -> int:
    from .targets import TARGETS
    from .trt_builder import plan_build

    cc = args.cc or (TARGETS[args.target].capabilities[0] if args.target in TARGETS else None)
    plan = plan_build(args.target, args.precision, args.trt_version, cc, args.dla, tile=args.tile,
                      batch_max=args.batch_max, batch_opt=args.batch_opt)
    print(json.dumps(plan.to_json(), indent=None if args.json else 2))
    return 0
