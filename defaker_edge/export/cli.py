"""`defaker export`, `defaker package verify|sign|keygen|info|path`, `defaker engine build|plan`
(standard library at import time)."""

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
  3b. with a DCT stream: rewrites every file to take it as uint8 [N, T/8, T/8, F] (--dct-layout) and checks
     that each file's outputs did not change by a single bit
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

Example (on a Jetson Orin):  defaker engine build --package "$(defaker package path)" --target orin --precision int8 \\
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
    p.add_argument("--pixels-graph", action="store_true",
                   help="also write model_fp32_pixels.onnx: the FP32 graph with the normalization and the DCT stream "
                        "inside, run from uint8 tiles + the table (for GPUs and TensorRT; role 'pixels')")
    p.add_argument("--dct-layout", choices=("nhwc-u8", "nchw-f32"), default="nhwc-u8",
                   help="how the files take the DCT stream (students with one): nhwc-u8 (default), uint8 "
                        "[N, T/8, T/8, F], the layout the runtime computes it in, checked bit-identical; nchw-f32, "
                        "the PyTorch export's float32 [N, F, T/8, T/8], for a caller built against older packages")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run_export)

    pk = sub.add_parser("package", help="package tools (verify, sign, keygen, info, path)",
                        description="Package tools.", epilog=PACKAGE_EPILOG, formatter_class=fmt)
    psub = pk.add_subparsers(dest="package_command", metavar="SUBCOMMAND")
    v = psub.add_parser("verify", help="check a package: schema, sha256, ONNX I/O, golden outputs, thresholds, signature",
                        description="Check everything a package's manifest claims; name each failing file. "
                                    "With a trusted key, also its signature: every file (manifest.json "
                                    "included) exactly as signed, none added. "
                                    "Exit 0 when it passes, 1 when it does not.")
    v.add_argument("package", nargs="?", help="package dir (default: the package installed with defaker-edge)")
    v.add_argument("--trusted-key", metavar="PUB",
                   help=f"Ed25519 public key (PEM) the package must be signed with (default: ${_TRUSTED_ENV})")
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    v.add_argument("--no-golden", action="store_true", help="skip re-running the golden input")
    v.set_defaults(func=run_verify)
    sg = psub.add_parser("sign", help="sign every file of a package with an Ed25519 key (-> PACKAGE/signature.json)",
                         description="Verify the package, then sign the sha256 of every file in it (manifest.json "
                                     "included) with an Ed25519 private key: PACKAGE/signature.json, a DSSE "
                                     "envelope around an in-toto statement. Sign again after any change (an "
                                     "engine build rewrites the manifest).")
    sg.add_argument("package", help="package dir")
    sg.add_argument("--key", required=True, metavar="PRIVATE_KEY",
                    help=f"Ed25519 private key, PEM (from `defaker package keygen`; ${_PASSWORD_ENV} if encrypted)")
    sg.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sg.set_defaults(func=run_sign)
    kg = psub.add_parser("keygen", help="make an Ed25519 key pair for signing packages",
                         description="Write NAME.key (private, PEM PKCS#8, mode 0600; encrypted when "
                                     f"${_PASSWORD_ENV} is set) and NAME.pub (public, PEM). Keep the private key "
                                     "off devices; give devices NAME.pub.")
    kg.add_argument("name", help="path prefix: NAME.key and NAME.pub are written (never overwritten)")
    kg.set_defaults(func=run_keygen)
    inf = psub.add_parser("info", help="a package's directory and figures: precisions, thresholds, metrics",
                          description="Print a package's directory, files and precisions, thresholds and "
                                      "uncertainty band, and the metrics its manifest records.")
    inf.add_argument("package", nargs="?", help="package dir (default: the package installed with defaker-edge)")
    inf.add_argument("--json", action="store_true", help="print it as one JSON object")
    inf.set_defaults(func=run_info)
    pa = psub.add_parser("path", help="print the installed default package's directory",
                         description="Print the directory of the package `defaker check` uses by default "
                                     "(or of PACKAGE), for scripts: ls \"$(defaker package path)\"")
    pa.add_argument("package", nargs="?", help="package dir (default: the installed one)")
    pa.set_defaults(func=run_path)

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


PACKAGE_EPILOG = """\
examples:
  defaker package info                                  the installed default package and its figures
  defaker package verify                                check it (schema, sha256, golden outputs)
  defaker package keygen release                        release.key (private) + release.pub
  defaker package sign PKG --key release.key            PKG/signature.json over every file
  defaker package verify PKG --trusted-key release.pub  also the signature: any edited byte is refused
  DEFAKER_TRUSTED_KEY=release.pub defaker check photo.jpg --package PKG   the runtime refuses unsigned packages
"""
_TRUSTED_ENV = "DEFAKER_TRUSTED_KEY"  # runtime.signing.TRUSTED_KEY_ENV (not imported: stdlib only here)
_PASSWORD_ENV = "DEFAKER_KEY_PASSWORD"


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
                                      simplify=not args.no_simplify, force=args.force, overlap=args.overlap,
                                      pixels_graph=args.pixels_graph, dct_layout=args.dct_layout))
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
    import os

    from ..runtime.package import resolve_package_dir
    from .package import verify_package

    root = resolve_package_dir(args.package)
    key = args.trusted_key or os.environ.get(_TRUSTED_ENV) or None
    rep = verify_package(root, golden=not args.no_golden, trusted_key=key)
    if args.json:
        print(json.dumps(rep.to_json()))
    elif rep.ok:
        print(f"{root}: OK ({len(rep.checked)} files checked; signature: {rep.signature})")
    else:
        print(f"{root}: FAILED; failing files: {', '.join(rep.failing_files)}")
        for p in rep.problems:
            print(f"  {p}")
    if not rep.ok and args.json:
        print(f"defaker: package verify failed: {', '.join(rep.failing_files)}", file=sys.stderr)
    return 0 if rep.ok else 1


def run_sign(args: argparse.Namespace) -> int:
    from ..errors import ArtifactError
    from ..runtime.signing import SIGNATURE, load_private_key, sign_package
    from .package import verify_package

    load_private_key(args.key)  # a bad key is refused before the (longer) package check
    rep = verify_package(args.package)
    probs = [p for p in rep.problems if p.file != SIGNATURE]
    if probs:  # a signature vouches for a package that passes verify, nothing less
        more = f" (and {len(probs) - 1} more: defaker package verify {args.package})" if len(probs) > 1 else ""
        raise ArtifactError(f"{args.package}: not signed, it fails verify: {probs[0]}{more}")
    path, keyid, n = sign_package(args.package, args.key)
    if args.json:
        print(json.dumps({"signature": str(path), "keyid": keyid, "files": n}))
    else:
        print(f"signed {n} files of {args.package} with key {keyid[:16]}: {path}")
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    from ..runtime.signing import generate_keypair

    priv, pub = f"{args.name}.key", f"{args.name}.pub"
    keyid = generate_keypair(priv, pub)
    print(f"wrote {priv} (private: keep it off devices) and {pub} (public: give it to devices); key {keyid[:16]}")
    return 0


def _fmt_metrics(d: dict) -> str:
    names = (("image_auc", "image AUC"), ("balanced_acc", "balanced acc"), ("pixel_f1", "pixel F1"),
             ("pixel_f1_best", "best pixel F1"))
    return ", ".join(f"{label} {d[k]:.3f}" for k, label in names if isinstance(d.get(k), (int, float)))


def run_info(args: argparse.Namespace) -> int:
    from ..runtime.package import load_package
    from ..runtime.signing import SIGNATURE

    pkg = load_package(args.package)
    s = pkg.summary()
    th = pkg.manifest.get("thresholds") or {}
    signed = (pkg.root / SIGNATURE).is_file()
    if args.json:
        print(json.dumps({"path": str(pkg.root), **s, "target_fpr": th.get("target_fpr"),
                          "dct": list(pkg.dct) if pkg.dct else None, "signed": signed}))
        return 0
    t = pkg.thresholds
    print(f"package    {pkg.root}")
    print(f"model_id   {s['model_id']}  (created {s['created']}; manifest sha256 {pkg.manifest_sha256[:16]}...)")
    stream = f"; compression-history stream: {pkg.dct[0]} DCT frequencies, clip {pkg.dct[1]}" if pkg.dct else ""
    print(f"tiling     {pkg.tile}x{pkg.tile} tiles, overlap {pkg.overlap}{stream}")
    fpr = f", fitted at {th['target_fpr']:g} false-positive rate" if isinstance(th.get("target_fpr"), (int, float)) else ""
    band = (f"uncertainty band [{t.band[0]:.3f}, {t.band[1]:.3f}] (re-checked at FP32)" if t.band
            else "no uncertainty band")
    print(f"threshold  {t.threshold:.4f} (temperature {t.temperature:.3f}{fpr}); {band}")
    print("files")
    for f in pkg.files:
        size = f"{f.bytes / 1e6:6.2f} MB" if isinstance(f.bytes, int) else "      ?"
        d = f.gate.get("deltas") or {}
        gate = ("; gate: " + ", ".join(f"d{k} {d[k]:+.4f}" for k in ("image_auc", "pixel_f1")
                                       if isinstance(d.get(k), (int, float)))) if d else ""
        print(f"  {f.path:28s} {f.precision:9s} {size}  {f.role or ''}"
              f"{'  (FORCED: failed its gate)' if f.forced else ''}{gate}")
    metrics = pkg.manifest.get("metrics") or {}
    if metrics:
        n = next((m.get("n") for m in metrics.values() if isinstance(m, dict) and m.get("n")), None)
        print("metrics    (recorded at build" + (f", {n} validation images" if n else "") + ")")
        for prec, m in metrics.items():
            if isinstance(m, dict):
                print(f"  {prec:9s} {_fmt_metrics(m)}")
    for line in _chain_lines(pkg.manifest.get("teacher") or {}):
        print(line)
    print(f"signature  {'present (check: defaker package verify --trusted-key PUB)' if signed else 'unsigned'}")
    return 0


def _chain_lines(teacher: dict) -> list[str]:
    """The teacher the student was distilled from and, where the manifest has it, the compression chain:
    each stage's held-out image AUC and pixel F1 and how much of the teacher's it kept."""
    if not teacher.get("id"):
        return []
    out = [f"teacher    {teacher['id']}" + (f"  ({teacher['role']})" if teacher.get("role") else "")]
    stages = (teacher.get("chain") or {}).get("stages") or []
    if stages:
        out.append("chain      (held-out real-photo set: image AUC, pixel F1 at the shipped cut; kept vs the teacher)")
    for st in stages:
        a = ((st.get("heldout") or {}).get("all") or {})
        r = a.get("retention") or {}
        auc, f1 = a.get("image_auc"), a.get("pixel_f1")
        kept = (f"  kept {r['image_auc']:.0%} / {r['pixel_f1']:.0%}"
                if isinstance(r.get("image_auc"), (int, float)) and isinstance(r.get("pixel_f1"), (int, float)) else "")
        params = f"{st['params'] / 1e3:.0f} k params" if isinstance(st.get("params"), int) else ""
        out.append(f"  {str(st.get('name')):14s} {params:14s} AUC {auc if auc is None else f'{auc:.3f}'}  "
                   f"F1 {f1 if f1 is None else f'{f1:.3f}'}{kept}")
    return out


def run_path(args: argparse.Namespace) -> int:
    from ..runtime.package import resolve_package_dir

    print(resolve_package_dir(args.package))
    return 0


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
