"""`defaker check` and `defaker serve`: what a device runs. Standard library only at module level."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pnm", ".mpo"}
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "int8", "int8-cpu", "fp8")

CHECK_EPILOG = """\
examples:
  defaker check photo.jpg                       uses the package installed with defaker-edge
  defaker check photos/ --json --mask-dir out   one JSON line per image, masks as out/<stem>.png
  defaker check scans/ --recursive --mask-dir out --overlay   also out/<stem>_overlay.jpg for people

Each JSON line: image, fake_prob (temperature-calibrated), is_fake (fake_prob >= threshold),
threshold, backend, precision, provider, fallback (null, or why the answer came from another path:
"int8-cpu: sha256 mismatch", "band: 0.48 in [0.4, 0.6]", "nan/inf in output"), ms. An unreadable
file gives {"image": ..., "error": ...} and the rest go on. Images are never resized: they are cut
into native-resolution tiles. Exit status: 0 when every image was read, 2 when some could not be.
"""

SERVE_EPILOG = """\
endpoints (Starlette on uvicorn, HTTP/1.1 keep-alive):
  POST /v1/check        body: raw image bytes, or multipart/form-data with the file in field "image";
                        ?mask=1 adds "mask_png": the mask (native size, 0..255) as base64 PNG
  GET  /healthz         alive: {"status": "ok", ...}
  GET  /readyz          ready: the model is loaded and a check slot is free (else 503)
  GET  /v1/model        the package's manifest summary and the backend in use
  GET  /metrics         Prometheus text: requests, latency histogram, fallbacks by reason, in-flight
  GET  /openapi.json    the API as OpenAPI 3.1
errors are JSON {"error": ..., "status": ...}: 400 bad request, 401 no/wrong token, 408 slow body or
headers, 413 body too large, 422 unreadable image or over --max-pixels, 503 busy (all --concurrency
slots taken after --queue-wait-s, or over --max-connections), 504 over --timeout-s.
SIGTERM stops accepting and lets in-flight requests finish (up to --drain-s).

example:
  defaker serve --package models/default --port 8080 &
  curl -s --data-binary @photo.jpg 'http://127.0.0.1:8080/v1/check?mask=0'
"""


class _Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the epilog's layout and shows each option's default (when it has a meaningful one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--package", help="package directory (default: the one installed with defaker-edge)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: TensorRT engine if compatible, else ONNX Runtime (TensorRT EP > CUDA EP > CPU EP)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: int8-cpu on CPU; on GPU the engine, else INT8 Q/DQ on the CUDA EP; else fp32")
    p.add_argument("--fallback", choices=("auto", "never"), default="auto",
                   help="auto: fall back to the FP32 model (and say why) on a bad file, NaN, or an unsure score; "
                        "never: fail instead")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per backend call (across images)")
    p.add_argument("--student", help="student checkpoint dir for --backend torch")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads a check may use (default: all cores; 1 keeps it on one core)")
    p.add_argument("--workers", type=int, default=None,
                   help="tile batches run at once on a CPU backend, each with threads/workers threads "
                        "(default 1; scripts/runtime_workers.py measures which is faster on your CPU)")
    p.add_argument("--decode-timeout", type=float, default=5.0, metavar="S",
                   help="seconds of decoding allowed per 10 MP of image (at least S for any image); a slower "
                        "(hostile) file gets an error instead of holding a core; 0 = no limit")


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check", help="is this image manipulated? (fake probability + mask per image)",
                       description="Check images for manipulation with a deployment package.",
                       epilog=CHECK_EPILOG, formatter_class=_Fmt)
    c.add_argument("images", nargs="+", metavar="IMG|DIR", help="image files and/or folders of images")
    _load_args(c)
    c.add_argument("--json", action="store_true", help="one JSON object per image on stdout, nothing else there")
    c.add_argument("--mask-dir", metavar="D", help="write D/<image stem>.png: mask probabilities 0..255 at the image's size")
    c.add_argument("--overlay", action="store_true", help="also write D/<stem>_overlay.jpg (red tint over the mask)")
    c.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger images (decompression bombs)")
    c.add_argument("--recursive", action="store_true", help="descend into sub-folders of DIR arguments")
    c.set_defaults(func=run_check)

    s = sub.add_parser("serve", help="HTTP API around the detector (localhost by default)",
                       description="Serve POST /v1/check over HTTP (Starlette on uvicorn).",
                       epilog=SERVE_EPILOG, formatter_class=_Fmt)
    _load_args(s)
    s.add_argument("--host", default="127.0.0.1", help="bind address; 0.0.0.0 exposes it to the network")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--max-body-mb", type=float, default=50.0, help="largest request body (413 above)")
    s.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image (422 above)")
    s.add_argument("--concurrency", type=int, default=4, help="images checked at the same time")
    s.add_argument("--queue-wait-s", type=float, default=10.0, help="how long a request waits for a slot (then 503)")
    s.add_argument("--timeout-s", type=float, default=60.0, help="per-request time limit (504 above)")
    s.add_argument("--max-connections", type=int, default=256, help="open connections at once (503 JSON above)")
    s.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="a connection must send its request headers within this (slow/idle clients are dropped)")
    s.add_argument("--body-timeout-s", type=float, default=30.0, help="the request body must arrive within this (408)")
    s.add_argument("--drain-s", type=float, default=30.0, help="on SIGTERM, how long in-flight requests may finish")
    s.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (except /healthz, /readyz); default: $DEFAKER_TOKEN; "
                        "required when --host is not loopback")
    s.set_defaults(func=run_serve)


def expand_inputs(items: list[str], recursive: bool) -> tuple[list[str], bool]:
    """Files as given, folders expanded to their image files (sorted). Returns (paths, any_folder)."""
    out, folder = [], False
    for it in items:
        p = Path(it)
        if p.is_dir():
            folder = True
            found = sorted(q for q in (p.rglob("*") if recursive else p.iterdir())
                           if q.is_file() and q.suffix.lower() in IMAGE_EXTS and not q.name.startswith("."))
            if not found:
                log.warning("%s: no image files%s", p, "" if recursive else " (use --recursive for sub-folders)")
            out.extend(str(q) for q in found)
        else:
            out.append(it)  # a file (or a missing path, which gets its own error line)
    return out, folder


def _out_names(paths: list[str], mask_dir: Path) -> dict[str, Path]:
    """mask path per image: D/<stem>.png; a second image with the same stem gets D/<stem>_<ext>.png."""
    used: set[str] = set()
    names = {}
    for p in paths:
        q = Path(p)
        stem = q.stem
        if stem in used:
            stem = f"{q.stem}_{q.suffix.lstrip('.').lower() or 'img'}"
            n = 2
            while stem in used:
                stem, n = f"{q.stem}_{n}", n + 1
            log.warning("%s: another image has the stem %r; its mask is %s.png", p, q.stem, stem)
        used.add(stem)
        names[p] = mask_dir / f"{stem}.png"
    return names


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is not a runtime dependency; no bar then
        return None
    return tqdm(total=total, file=sys.stderr, disable=not enabled, unit="img", dynamic_ncols=True)


def _load_detector(args: argparse.Namespace, **kw):
    from . import Detector

    return Detector.load(args.package, backend=args.backend, precision=args.precision, fallback=args.fallback,
                         batch_size=args.batch_size, student=args.student, threads=args.threads,
                         workers=args.workers, decode_timeout=args.decode_timeout or None, **kw)


def run_check(args: argparse.Namespace) -> int:
    from ..errors import DefakerError
    from .detector import Verdict

    if args.overlay and not args.mask_dir:
        raise DefakerError("--overlay writes next to the masks: give --mask-dir D too")
    paths, folder = expand_inputs(args.images, args.recursive)
    if not paths:
        raise DefakerError("no images to check")
    mask_dir = Path(args.mask_dir) if args.mask_dir else None
    names = _out_names(paths, mask_dir) if mask_dir else {}
    det = _load_detector(args, mask="full" if mask_dir else "none", mask_dtype="uint8", max_pixels=args.max_pixels)
    bar = _progress(len(paths), folder or len(paths) > 1)
    failed = 0
    try:
        for path, res in zip(paths, det.check_many(paths, errors="yield")):
            if isinstance(res, Verdict):
                line = res.to_json()
                line["image"] = path
                if mask_dir and res.mask is not None:
                    from ..data.io import save_mask_png

                    mp = names[path]
                    save_mask_png(mp, res.mask)
                    line["mask"] = str(mp)
                    if args.overlay:
                        from ..data.io import load_image
                        from .overlay import save_overlay

                        ov = mp.with_name(mp.stem + "_overlay.jpg")
                        save_overlay(ov, load_image(path, max_pixels=args.max_pixels), res.mask)
                        line["overlay"] = str(ov)
                if args.json:
                    print(json.dumps(line), flush=True)
                else:
                    verdict = "FAKE" if res.is_fake else "real"
                    why = f"  [fallback: {res.fallback}]" if res.fallback else ""
                    print(f"{path}: {verdict}  p={res.fake_prob:.3f} (threshold {res.threshold:.3f}; "
                          f"{res.precision} on {res.provider}; {line['ms']:.0f} ms){why}", flush=True)
            else:
                failed += 1
                msg = getattr(res, "reason", None) or str(res)
                if args.json:
                    print(json.dumps({"image": path, "error": msg}), flush=True)
                else:
                    print(f"{path}: ERROR {msg}", flush=True)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        det.close()
    if failed:
        print(f"defaker check: {failed} of {len(paths)} image(s) could not be checked", file=sys.stderr)
    return 2 if failed else 0


def run_serve(args: argparse.Namespace) -> int:
    import os

    from .server import TOKEN_ENV, ServerConfig, serve

    cfg = ServerConfig(host=args.host, port=args.port, max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
                       concurrency=args.concurrency, queue_wait_s=args.queue_wait_s, timeout_s=args.timeout_s,
                       decode_timeout=args.decode_timeout or None, max_connections=args.max_connections,
                       header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                       drain_s=args.drain_s, token=args.token or os.environ.get(TOKEN_ENV) or None)
    det = _load_detector(args, mask="none", mask_dtype="uint8", max_pixels=args.max_pixels)
    serve(det, cfg)
    return 0

