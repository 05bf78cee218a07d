"""`defaker check` and `defaker serve`: what a device runs. Standard library only at module level."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pnm", ".mpo"}
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "int8", "int8-cpu", "fp8")
# What check writes per image. A suffix of its own keeps a mask from ever taking an input's name
# (D/photo.png), even when --mask-dir is the input folder; inputs named like these are skipped.
MASK_SUFFIX, HEATMAP_SUFFIX, OVERLAY_SUFFIX = ".mask.png", ".heatmap.png", ".overlay.jpg"
EXIT_OK, EXIT_FAKE, EXIT_USAGE, EXIT_UNREADABLE = 0, 1, 2, 3

CHECK_EPILOG = """\
examples:
  defaker check photo.jpg                       uses the package installed with defaker-edge
  defaker check photos/ --json --mask-dir out   one JSON line per image; out/<stem>.mask.png (binary) + .heatmap.png
  defaker check scans/ --recursive --mask-dir out --overlay   also out/<stem>.overlay.jpg for people
  find . -name '*.jpg' | defaker check - --json   paths from stdin (one per line); @list.txt reads a file

Each JSON line: image, fake_prob (temperature-calibrated), is_fake (fake_prob >= threshold),
threshold, pixel_threshold (the heatmap's cut for the binary mask), backend, precision, provider, fallback (null, or why the answer came from another path:
"int8-cpu: sha256 mismatch", "band: 0.48 in [0.4, 0.6]", "nan/inf in output"), ms, package_id and
manifest_sha256 (which package answered), and "warning" when the answering file failed its accuracy
gate (only loaded when asked for by name). An unreadable file gives {"image": ..., "error": ...} and
the rest go on. Images are never resized: they are cut into native-resolution tiles.

Masks: D/<stem>.mask.png is the decision, 255 where heatmap >= pixel_threshold (the package's
calibrated cut), 0 elsewhere; D/<stem>.heatmap.png holds the probabilities as 0..255. Outputs never
replace inputs: an output that would land on an input is refused, files named like outputs
(*.mask.png, *.heatmap.png, *.overlay.jpg) are not checked, and an existing output is replaced only
with --overwrite.

Exit status:
  0  every image was read and judged
  1  --fail-on-fake and at least one image was judged fake
  2  usage error, or the package could not be loaded (nothing was checked)
  3  some inputs could not be read: files, folders that cannot be listed (given, in an @list, or
     under --recursive), list files; each has its own error line and the rest were checked; wins over 1
"""

SERVE_EPILOG = """\
endpoints (Starlette on uvicorn, HTTP/1.1 keep-alive):
  POST /v1/check        body: raw image bytes, or multipart/form-data with the file in field "image";
                        ?mask=1 adds "mask_png" (the binary mask at pixel_threshold, 255 = edited) and
                        "heatmap_png" (probabilities 0..255), both base64 PNG at the image's size
  GET  /healthz         alive: {"status": "ok", ...}
  GET  /readyz          ready: the model is loaded and a check slot is free (else 503)
  GET  /v1/model        the package's manifest summary and the backend in use
  GET  /metrics         Prometheus text: requests, latency histogram, fallbacks by reason, in-flight
  GET  /openapi.json    the API as OpenAPI 3.1
  GET  /docs            the same as a web page (self-contained: no script, nothing from a CDN)
errors are JSON {"error": ..., "status": ...}: 400 bad request, 401 no/wrong token, 408 slow body or
headers, 413 body too large, 422 unreadable image or over --max-pixels, 503 busy (all --concurrency
slots taken after --queue-wait-s, or over --max-connections), 504 over --timeout-s.
SIGTERM stops accepting, lets in-flight requests finish (up to --drain-s) and exits 0 (1 if checks were
still running when --drain-s ran out). One JSON line per request goes to --access-log (no image bytes);
/metrics counts every timeout in defaker_timeouts_total{kind="header|body|queue|check"}.

example:
  defaker serve --port 8080 &                 the installed default package (defaker package path)
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
    p.add_argument("--trusted-key", metavar="PUB",
                   help="refuse a package not signed by this Ed25519 public key (PEM; `defaker package sign`); "
                        "default: $DEFAKER_TRUSTED_KEY, unset = unsigned packages load")


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check", help="is this image manipulated? (fake probability + mask per image)",
                       description="Check images for manipulation with a deployment package.",
                       epilog=CHECK_EPILOG, formatter_class=_Fmt)
    c.add_argument("images", nargs="+", metavar="IMG|DIR",
                   help="image files and/or folders of images; - reads paths from stdin, @FILE from a list file")
    _load_args(c)
    c.add_argument("--json", action="store_true", help="one JSON object per image on stdout, nothing else there")
    c.add_argument("--mask-dir", metavar="D",
                   help="write D/<image stem>.mask.png, the binary mask at the package's pixel threshold "
                        "(255 edited, 0 untouched), and D/<stem>.heatmap.png, the edit probabilities 0..255")
    c.add_argument("--overlay", action="store_true",
                   help="also write D/<stem>.overlay.jpg: the binary mask's outline, a tint, and the verdict as a caption")
    c.add_argument("--overwrite", action="store_true", help="replace masks/overlays left by an earlier run")
    c.add_argument("--fail-on-fake", action="store_true", help="exit 1 when any image is judged fake")
    c.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, notes or summary; without --json no per-image lines (errors still on stderr)")
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
    s.add_argument("--access-log", default="-", metavar="FILE|-|off",
                   help="one JSON line per request (time, method, path, status, ms, bytes_in, bytes_out, client): "
                        "- is stderr, FILE appends, off drops them")
    s.set_defaults(func=run_serve)


def _is_output_name(name: str) -> bool:
    return name.lower().endswith((MASK_SUFFIX, HEATMAP_SUFFIX, OVERLAY_SUFFIX))


def _listed(item: str) -> list[str] | None:
    """The paths `-` (stdin) or `@FILE` stand for, one per line (blank lines ignored); None for a
    plain argument. An existing file whose name starts with @ is an image, not a list. A list
    that cannot be read raises OSError/UnicodeDecodeError (expand_inputs makes it an error line)."""
    if item == "-":
        text = sys.stdin.read()
    elif item.startswith("@") and len(item) > 1 and not os.path.lexists(item):
        text = Path(item[1:]).read_text(encoding="utf-8")
    else:
        return None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e.strerror}" if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"


def _walk(top: str, recursive: bool, errors: list[tuple[str, str]]) -> list[str]:
    """The files in folder `top` (and its sub-folders when recursive, symlinks to folders not
    followed). A folder that cannot be listed, top or sub, is an error entry, never skipped silently."""
    found: list[str] = []
    if not recursive:
        try:
            with os.scandir(top) as it:
                for e in it:
                    try:
                        if e.is_file():
                            found.append(e.path)
                    except OSError as x:  # a stat that fails: the file gets its own error when read
                        found.append(e.path)
                        log.debug("%s: %s", e.path, x)
        except OSError as e:
            errors.append((top, f"cannot read the folder ({_why(e)})"))
        return found

    def failed(e: OSError) -> None:
        errors.append((e.filename or top, f"cannot read the folder ({_why(e)})"))

    for root, _, files in os.walk(top, onerror=failed):
        found.extend(os.path.join(root, f) for f in files)
    return found


def expand_inputs(items: list[str], recursive: bool) -> tuple[list[str], bool, int, list[tuple[str, str]]]:
    """Files as given, folders expanded to their image files (sorted), `-` and `@FILE` to the paths
    they list. Returns (paths, any_folder_or_list, files skipped for being named like outputs,
    errors): each folder or list file that cannot be read (given, listed, or met under
    --recursive) is one (input, reason) error; the other inputs are still expanded."""
    out: list[str] = []
    errors: list[tuple[str, str]] = []
    folder, skipped = False, 0
    for it in items:
        try:
            listed = _listed(it)
        except (OSError, UnicodeDecodeError) as e:
            errors.append((it, f"cannot read the list file ({_why(e)})"))
            folder = True
            continue
        if listed is not None:
            sub, _, n, errs = expand_inputs(listed, recursive)
            out.extend(sub)
            errors.extend(errs)
            folder, skipped = True, skipped + n
            continue
        if os.path.isdir(it):  # os.path, not Path.is_dir: a denied stat is False, not an exception
            folder = True
            n_err = len(errors)
            found = sorted(q for q in _walk(it, recursive, errors)
                           if Path(q).suffix.lower() in IMAGE_EXTS and not Path(q).name.startswith("."))
            mine = [q for q in found if _is_output_name(Path(q).name)]  # an earlier run's masks and overlays
            skipped += len(mine)
            found = [q for q in found if not _is_output_name(Path(q).name)]
            if not found and not mine and len(errors) == n_err:
                log.warning("%s: no image files%s", it, "" if recursive else " (use --recursive for sub-folders)")
            out.extend(found)
        else:
            out.append(it)  # a file (or a missing path, which gets its own error line)
    return out, folder, skipped, errors


def _out_names(paths: list[str], mask_dir: Path) -> dict[str, Path]:
    """mask path per image: D/<stem>.mask.png; a second image with the same stem gets D/<stem>_<ext>.mask.png."""
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
            log.warning("%s: another image has the stem %r; its mask is %s%s", p, q.stem, stem, MASK_SUFFIX)
        used.add(stem)
        names[p] = mask_dir / f"{stem}{MASK_SUFFIX}"
    return names


def overlay_path(mask_path: Path) -> Path:
    return mask_path.with_name(mask_path.name[:-len(MASK_SUFFIX)] + OVERLAY_SUFFIX)


def heatmap_path(mask_path: Path) -> Path:
    return mask_path.with_name(mask_path.name[:-len(MASK_SUFFIX)] + HEATMAP_SUFFIX)


def _check_outputs(paths: list[str], names: dict[str, Path], overlay: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, a run that would replace an input (never allowed) or an
    existing file (only with --overwrite)."""
    from ..errors import DefakerError

    inputs = {Path(p).resolve() for p in paths if os.path.isfile(p)}
    outs = [(p, o) for p, m in names.items()
            for o in ((m, heatmap_path(m), overlay_path(m)) if overlay else (m, heatmap_path(m)))]
    for p, o in outs:
        if o.resolve() in inputs:
            raise DefakerError(f"--mask-dir {o.parent}: the output for {p} would replace the input {o}; "
                               "choose another --mask-dir (inputs are never overwritten)")
    if not overwrite:
        exist = [str(o) for _, o in outs if o.exists()]
        if exist:
            more = f" and {len(exist) - 1} more" if len(exist) > 1 else ""
            raise DefakerError(f"{exist[0]}{more} already exist(s): pass --overwrite to replace them, "
                               "or choose another --mask-dir")


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
                         workers=args.workers, decode_timeout=args.decode_timeout or None,
                         trusted_key=args.trusted_key, **kw)


def run_check(args: argparse.Namespace) -> int:
    pkg_log = logging.getLogger("defaker_edge")
    level = pkg_log.level
    if args.quiet:  # notes and load warnings off; restored after, for callers of main() in-process
        pkg_log.setLevel(logging.ERROR)
    try:
        return _run_check(args)
    finally:
        pkg_log.setLevel(level)


def _run_check(args: argparse.Namespace) -> int:
    from ..errors import DefakerError
    from .detector import Verdict

    if args.overlay and not args.mask_dir:
        raise DefakerError("--overlay writes next to the masks: give --mask-dir D too")
    paths, folder, skipped, unread = expand_inputs(args.images, args.recursive)
    if skipped and not args.quiet:
        print(f"defaker check: skipped {skipped} file(s) named like its outputs (*{MASK_SUFFIX}, *{HEATMAP_SUFFIX}, *{OVERLAY_SUFFIX})",
              file=sys.stderr)
    if not paths and not unread:
        raise DefakerError("no images to check")
    mask_dir = Path(args.mask_dir) if args.mask_dir else None
    names = _out_names(paths, mask_dir) if mask_dir else {}
    if mask_dir:
        _check_outputs(paths, names, args.overlay, args.overwrite)
    det = _load_detector(args, mask="full" if mask_dir else "none", mask_dtype="uint8", max_pixels=args.max_pixels)
    for item, msg in unread:  # folders and list files that could not be read: one line each, then the rest
        _error_line(args, item, msg)
    # a bar only where a person watches: a log file or a pipe gets no carriage-return noise
    bar = _progress(len(paths), (folder or len(paths) > 1) and not args.quiet and sys.stderr.isatty())
    failed = fakes = 0
    with det:
        try:
            for path, res in zip(paths, det.check_many(paths, errors="yield", keep_pixels=bool(mask_dir and args.overlay))):
                if isinstance(res, Verdict):
                    fakes += res.is_fake
                    line = res.to_json()
                    line["image"] = path
                    if mask_dir and res.mask is not None:
                        _write_outputs(args, path, names[path], res, line)
                    if args.json:
                        print(json.dumps(line), flush=True)
                    elif not args.quiet:
                        verdict = "FAKE" if res.is_fake else "real"
                        why = f"  [fallback: {res.fallback}]" if res.fallback else ""
                        warn = f"  [warning: {res.warning}]" if res.warning else ""
                        print(f"{path}: {verdict}  p={res.fake_prob:.3f} (threshold {res.threshold:.3f}; "
                              f"{res.precision} on {res.provider}; {line['ms']:.0f} ms){why}{warn}", flush=True)
                else:
                    failed += 1
                    _error_line(args, path, getattr(res, "reason", None) or str(res))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    if failed or unread:
        if not args.quiet:
            what = f"{failed} of {len(paths)} image(s) could not be checked"
            if unread:
                what += f"; {len(unread)} folder(s)/list(s) could not be read"
            print(f"defaker check: {what}", file=sys.stderr)
        return EXIT_UNREADABLE
    return EXIT_FAKE if args.fail_on_fake and fakes else EXIT_OK


def _error_line(args: argparse.Namespace, path: str, msg: str) -> None:
    if args.json:
        print(json.dumps({"image": path, "error": msg}), flush=True)
    else:  # with --quiet the error still shows, on stderr
        print(f"{path}: ERROR {msg}", file=sys.stderr if args.quiet else sys.stdout, flush=True)


def _write_outputs(args: argparse.Namespace, path: str, mp: Path, res, line: dict) -> None:
    from ..artifacts import atomic_path
    from ..data.io import save_mask_png

    with atomic_path(mp) as tmp:  # a reader (or a crash) never meets half a mask
        save_mask_png(tmp, res.mask)  # the decision: 255 edited, 0 untouched
    line["mask"] = str(mp)
    hp = heatmap_path(mp)
    with atomic_path(hp) as tmp:
        save_mask_png(tmp, res.heatmap)  # the probabilities, 0..255
    line["heatmap"] = str(hp)
    if args.overlay:
        from .overlay import caption_of, save_overlay

        ov = overlay_path(mp)
        with atomic_path(ov) as tmp:  # on the pixels the check decoded (keep_pixels), not a second decode
            save_overlay(tmp, res.pixels, res.heatmap, caption=caption_of(res), cut=res.pixel_threshold)
        res.pixels = None
        line["overlay"] = str(ov)


def run_serve(args: argparse.Namespace) -> int:
    import os

    from .server import TOKEN_ENV, ServerConfig, serve

    cfg = ServerConfig(host=args.host, port=args.port, max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
                       concurrency=args.concurrency, queue_wait_s=args.queue_wait_s, timeout_s=args.timeout_s,
                       decode_timeout=args.decode_timeout or None, max_connections=args.max_connections,
                       header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                       drain_s=args.drain_s, token=args.token or os.environ.get(TOKEN_ENV) or None,
                       access_log=args.access_log)
    det = _load_detector(args, mask="none", mask_dtype="uint8", max_pixels=args.max_pixels)
    return serve(det, cfg)

