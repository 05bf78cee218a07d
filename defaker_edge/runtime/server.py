"""`defaker serve`: the HTTP API, Starlette on uvicorn (imported only when serving).

Why each limit exists (issue #19's audit), and what a client sees when it hits one:
- connections: at most `max_connections` open at once (a 1,000-idle-socket flood costs sockets, not
  threads); one over the limit gets a JSON 503 and is closed. The listen backlog is 2048, so a burst
  of 64 concurrent clients is queued by the kernel instead of reset.
- slow and idle clients: a connection must finish its request headers within `header_timeout_s` of
  opening (or of its previous response), whatever it trickles in meanwhile; the body must arrive
  within `body_timeout_s` (408). Idle keep-alive connections close after `keepalive_s`.
- body: Content-Length (or the chunked total) over `max_body_mb` is 413; multipart bodies go through
  python-multipart with at most `max_parts` parts (400 above), never recursively.
- work: `concurrency` slots (503 after `queue_wait_s` waiting for one), a per-request time limit
  (504), and a decode deadline per image (data.io, `decode_timeout` s per 10 MP), so the work behind
  a 504 ends and frees its slot instead of holding it for minutes.
- every error is JSON {"error": ..., "status": ...}, including the HTTP parser's own 400s.
- SIGTERM: stop accepting, let in-flight requests finish (up to `drain_s`), then exit 0 (1 when the
  drain ran out of time with checks still running).
- memory: after a large image (TRIM_PIXELS or TRIM_BYTES) the worker asks glibc to hand freed heap
  pages back (malloc_trim): glibc's mmap threshold rises after the first big free, so later large
  buffers come from the heap and, freed, would stay in RSS (a 40 MP PNG left ~850 MB behind).
- every request gets one JSON line on the `defaker_edge.access` logger (no image bytes); every
  timeout (header, body, queue, check) is counted in /metrics.
- auth: with a token (--token or DEFAKER_TOKEN) every endpoint but /healthz and /readyz needs
  `Authorization: Bearer <token>`; binding beyond loopback without one is refused.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import ctypes.util
import hmac
import html
import io
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

from ..errors import DefakerError, ImageError, MissingDependencyError

log = logging.getLogger(__name__)
access_log = logging.getLogger("defaker_edge.access")  # one JSON line per request (serve() sends it to stderr)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "DEFAKER_TOKEN"
BACKLOG = 2048
OPEN_PATHS = ("/healthz", "/readyz")  # probes answer without the token
MAX_URL = 8 * 1024
MAX_HEADERS = 64 * 1024
PATHS = ("/v1/check", "/v1/model", "/metrics", "/openapi.json", "/docs", *OPEN_PATHS)
TIMEOUT_KINDS = ("header", "body", "queue", "check")
# after a check this large, freed memory is handed back to the OS (see the module docstring)
TRIM_PIXELS = 4_000_000
TRIM_BYTES = 8 << 20


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_mb: float = 50.0
    max_pixels: int = 40_000_000
    concurrency: int = 4
    queue_wait_s: float = 10.0
    timeout_s: float = 60.0
    decode_timeout: float | None = 5.0  # seconds of decoding per 10 MP (data.io.decode_limit_s)
    max_connections: int = 256
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_s: float = 5.0
    max_parts: int = 16
    drain_s: float = 30.0
    token: str | None = None
    access_log: str | None = None  # serve(): "-" stderr, a file path, "off"; None: the logger as configured


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _json_bytes(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}).encode()


# ------------------------------------------------------------------ multipart
def parse_multipart(body: bytes, content_type: str, field: str = "image", max_parts: int = 16) -> tuple[bytes, str | None]:
    """(file bytes, filename) of `field` in a multipart/form-data body, parsed by python-multipart.

    Flat (a nested multipart part is just bytes), at most `max_parts` parts and 16 headers a part:
    anything else is an HttpError(400)."""
    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError:  # pragma: no cover - a runtime dependency
        raise MissingDependencyError("python-multipart", "multipart uploads", "pip install python-multipart") from None
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HttpError(400, "multipart/form-data without a boundary")
    parts: list[dict[str, Any]] = []
    hdr: dict[str, bytearray] = {}

    def begin() -> None:
        if len(parts) >= max_parts:
            raise HttpError(400, f"more than {max_parts} multipart parts")
        parts.append({"headers": {}, "data": bytearray()})

    def field_(d: bytes, a: int, b: int) -> None:
        hdr.setdefault("f", bytearray()).extend(d[a:b])

    def value(d: bytes, a: int, b: int) -> None:
        hdr.setdefault("v", bytearray()).extend(d[a:b])

    def header_end() -> None:
        parts[-1]["headers"][bytes(hdr.get("f", b"")).lower()] = bytes(hdr.get("v", b""))
        hdr.clear()

    def data(d: bytes, a: int, b: int) -> None:
        parts[-1]["data"].extend(d[a:b])

    cb = {"on_part_begin": begin, "on_header_field": field_, "on_header_value": value,
          "on_header_end": header_end, "on_part_data": data}
    try:
        p = MultipartParser(boundary, cb, max_header_count=16)
        p.write(body)
        p.finalize()
    except HttpError:
        raise
    except Exception as e:  # python-multipart's MultipartParseError and friends
        raise HttpError(400, f"malformed multipart/form-data body ({e})") from None
    if not parts:
        raise HttpError(400, "malformed multipart/form-data body (no parts)")
    for part in parts:
        _, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if opts.get(b"name", b"").decode("utf-8", "replace") == field:
            if not part["data"]:
                raise HttpError(400, f"multipart field {field!r} is empty")
            fname = opts.get(b"filename")
            return bytes(part["data"]), fname.decode("utf-8", "replace") if fname else None
    raise HttpError(400, f"multipart/form-data without a field named {field!r}")


def _png_b64(mask) -> str:
    import numpy as np
    from PIL import Image

    if mask.dtype != np.uint8:
        mask = np.clip(np.rint(mask.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------ metrics
class Metrics:
    """Prometheus text exposition, by hand (a few counters do not need prometheus_client)."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.hist: dict[str, list[float]] = {}  # path -> bucket counts + [sum, count]
        self.fallbacks: dict[str, int] = {}
        self.timeouts: dict[str, int] = dict.fromkeys(TIMEOUT_KINDS, 0)
        self.refused = 0  # connections over --max-connections
        self.trims = 0  # malloc_trim calls after large images
        self.in_flight = 0  # checks holding a slot

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
            h = self.hist.setdefault(path, [0.0] * (len(self.BUCKETS) + 2))
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def timeout(self, kind: str) -> None:
        with self.lock:
            self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    def fallback(self, reason: str) -> None:
        key = reason.split(";")[0].split(":")[0].strip()[:40] or "other"
        with self.lock:
            self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    def render(self, slots_free: int, connections: int) -> str:
        def esc(s: str) -> str:
            return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")

        out = ["# HELP defaker_requests_total HTTP requests answered, by path and status.",
               "# TYPE defaker_requests_total counter"]
        with self.lock:
            out += [f'defaker_requests_total{{path="{esc(p)}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())]
            out += ["# HELP defaker_request_duration_seconds Time to answer a request.",
                    "# TYPE defaker_request_duration_seconds histogram"]
            for p, h in sorted(self.hist.items()):
                out += [f'defaker_request_duration_seconds_bucket{{path="{esc(p)}",le="{b:g}"}} {h[i]:g}'
                        for i, b in enumerate(self.BUCKETS)]
                out += [f'defaker_request_duration_seconds_bucket{{path="{esc(p)}",le="+Inf"}} {h[-1]:g}',
                        f'defaker_request_duration_seconds_sum{{path="{esc(p)}"}} {h[-2]:.6f}',
                        f'defaker_request_duration_seconds_count{{path="{esc(p)}"}} {h[-1]:g}']
            out += ["# HELP defaker_fallbacks_total Verdicts answered by a fallback path, by reason.",
                    "# TYPE defaker_fallbacks_total counter"]
            out += [f'defaker_fallbacks_total{{reason="{esc(r)}"}} {n}' for r, n in sorted(self.fallbacks.items())]
            out += ["# HELP defaker_timeouts_total Requests cut off by a time limit: header (--header-timeout-s), "
                    "body (--body-timeout-s), queue (--queue-wait-s, 503), check (--timeout-s, 504).",
                    "# TYPE defaker_timeouts_total counter"]
            out += [f'defaker_timeouts_total{{kind="{k}"}} {n}' for k, n in sorted(self.timeouts.items())]
            out += ["# HELP defaker_connections_refused_total Connections refused over --max-connections.",
                    "# TYPE defaker_connections_refused_total counter", f"defaker_connections_refused_total {self.refused}",
                    "# HELP defaker_memory_trims_total Times freed memory was returned to the OS after a large image.",
                    "# TYPE defaker_memory_trims_total counter", f"defaker_memory_trims_total {self.trims}"]
            out += ["# HELP defaker_in_flight Checks running now (holding a slot).", "# TYPE defaker_in_flight gauge",
                    f"defaker_in_flight {self.in_flight}"]
        out += ["# HELP defaker_slots_free Check slots free now.", "# TYPE defaker_slots_free gauge",
                f"defaker_slots_free {slots_free}",
                "# HELP defaker_connections Open HTTP connections.", "# TYPE defaker_connections gauge",
                f"defaker_connections {connections}"]
        return "\n".join(out) + "\n"


def openapi() -> dict[str, Any]:
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "defaker-edge", "version": "1",
                 "description": "Is this image manipulated? POST the image, get a calibrated fake probability."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"],
                          "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "Verdict": {"type": "object", "required": ["image", "fake_prob", "is_fake", "threshold"],
                            "properties": {"image": {"type": "string"}, "fake_prob": {"type": "number"},
                                           "is_fake": {"type": "boolean"}, "threshold": {"type": "number"},
                                           "backend": {"type": "string"}, "precision": {"type": "string"},
                                           "provider": {"type": "string"},
                                           "fallback": {"type": ["string", "null"]}, "ms": {"type": "number"},
                                           "height": {"type": "integer"}, "width": {"type": "integer"},
                                           "tiles": {"type": "integer"},
                                           "mask_png": {"type": "string", "description": "base64 PNG, with ?mask=1: the binary mask "
                                                                "(255 edited, 0 untouched) at pixel_threshold"},
                                           "heatmap_png": {"type": "string", "description": "base64 PNG, with ?mask=1: "
                                                           "the edit probabilities as 0..255"}}},
            },
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/check": {"post": {
                "summary": "Check one image (raw bytes, or multipart/form-data field 'image')",
                "parameters": [{"name": "mask", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}}],
                "requestBody": {"required": True, "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "image": {"type": "string", "format": "binary"}}}}}},
                "responses": {"200": {"description": "verdict", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Verdict"}}}},
                    **{str(c): err for c in (400, 401, 408, 413, 422, 500, 503, 504)}}}},
            "/v1/model": {"get": {"summary": "The package's manifest summary and the backend in use",
                                  "responses": {"200": {"description": "model"}}}},
            "/healthz": {"get": {"summary": "Alive (no token needed)", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "A check slot is free and the model is loaded (no token needed)",
                                "responses": {"200": {"description": "ready"}, "503": err}}},
            "/metrics": {"get": {"summary": "Prometheus text", "responses": {"200": {"description": "metrics"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
            "/docs": {"get": {"summary": "This document as a web page (no script, nothing from the network)",
                              "responses": {"200": {"description": "HTML"}}}},
        },
    }


def docs_html(doc: dict[str, Any]) -> str:
    """The OpenAPI document as one self-contained HTML page. Swagger UI and Redoc load their
    JavaScript from a CDN (or a ~1 MB vendored bundle), and a device often reaches no CDN: a page
    rendered here from the same dict as /openapi.json is always there and always in step."""
    e = html.escape

    def schema(s: dict[str, Any]) -> str:
        if "$ref" in s:
            name = s["$ref"].rsplit("/", 1)[-1]
            return f'<a href="#schema-{e(name)}">{e(name)}</a>'
        t = s.get("type", "object")
        t = " | ".join(t) if isinstance(t, list) else t
        return e(f"{t}" + (f" ({s['format']})" if "format" in s else "")
                 + (f" one of {', '.join(s['enum'])}" if "enum" in s else ""))

    info = doc.get("info", {})
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>{e(info.get('title', 'API'))} API</title><style>body{{font:14px/1.4 sans-serif;max-width:60em;"
           "margin:2em auto;padding:0 1em}code,td{font-family:monospace}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}h2{margin-top:1.5em}</style></head><body>",
           f"<h1>{e(info.get('title', 'API'))} <small>v{e(str(info.get('version', '')))}</small></h1>",
           f"<p>{e(info.get('description', ''))}</p>",
           "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI "
           f"{e(doc.get('openapi', ''))}). With a token, send <code>Authorization: Bearer &lt;token&gt;</code> "
           "(not needed for /healthz and /readyz).</p>"]
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            out.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2><p>{e(op.get('summary', ''))}</p>")
            params = op.get("parameters") or []
            if params:
                out.append("<p>Parameters: " + ", ".join(
                    f"<code>{e(p['name'])}</code> ({e(p['in'])}, {schema(p.get('schema', {}))})" for p in params) + "</p>")
            body = (op.get("requestBody") or {}).get("content") or {}
            if body:
                out.append("<p>Body: " + ", ".join(f"<code>{e(ct)}</code>" for ct in body) + "</p>")
            rows = []
            for code, r in op.get("responses", {}).items():
                sch = next(iter((r.get("content") or {}).values()), {}).get("schema")
                rows.append(f"<tr><td>{e(code)}</td><td>{e(r.get('description', ''))}</td>"
                            f"<td>{schema(sch) if sch else ''}</td></tr>")
            out.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>" + "".join(rows) + "</table>")
            if path == "/v1/check":  # a plain form: works in any browser when no token is set
                out.append("<form action='/v1/check' method='post' enctype='multipart/form-data'><p>Try it: "
                           "<input type='file' name='image'> <button>check</button></p></form>")
    out.append("<h2>Schemas</h2>")
    for name, s in doc.get("components", {}).get("schemas", {}).items():
        req = set(s.get("required", []))
        rows = "".join(f"<tr><td>{e(k)}{' *' if k in req else ''}</td><td>{schema(v)}</td>"
                       f"<td>{e(v.get('description', ''))}</td></tr>" for k, v in s.get("properties", {}).items())
        out.append(f"<h3 id='schema-{e(name)}'>{e(name)}</h3><table><tr><th>field (* required)</th><th>type</th>"
                   f"<th></th></tr>{rows}</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS: nothing to call; memory then stays with the process)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def _log_access(method: str, path: str, status: int, seconds: float, n_in: int, n_out: int, client: str) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                                    "method": method, "path": path, "status": status,
                                    "ms": round(seconds * 1e3, 2), "bytes_in": n_in, "bytes_out": n_out,
                                    "client": client}))


# ------------------------------------------------------------------ the app
class _State:
    def __init__(self, detector, cfg: ServerConfig):
        self.detector = detector
        self.cfg = cfg
        self.metrics = Metrics()
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency), thread_name_prefix="defaker-check")
        self.slots: asyncio.Semaphore | None = None  # made on the server's loop
        self.connections: set = set()

    def slots_free(self) -> int:
        return self.slots._value if self.slots is not None else max(1, self.cfg.concurrency)


def build_app(detector, cfg: ServerConfig, state: _State | None = None):
    """The ASGI app: Starlette routes inside a small middleware for auth, metrics and JSON errors."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    st = state or _State(detector, cfg)
    det = detector

    def jerr(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers or None)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "backend": det.backend.name, "precision": det.backend.precision})

    async def readyz(_: Request) -> Response:
        free = st.slots_free()
        if free <= 0:
            return jerr(503, f"busy: all {cfg.concurrency} check slots taken")
        return JSONResponse({"status": "ready", "slots_free": free})

    async def model(_: Request) -> Response:
        return JSONResponse({**det.package.summary(), "runtime": {k: v for k, v in det.info().items() if k != "package"}})

    async def metrics(_: Request) -> Response:
        return Response(st.metrics.render(st.slots_free(), len(st.connections)),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def spec(_: Request) -> Response:
        return JSONResponse(openapi())

    async def docs(_: Request) -> Response:
        return HTMLResponse(docs_html(openapi()))

    async def read_body(request: Request) -> bytes:
        limit = int(cfg.max_body_mb * 1024 * 1024)
        raw = request.headers.get("content-length")
        if raw is not None:
            try:
                n = int(raw)
            except ValueError:
                raise HttpError(400, "bad Content-Length") from None
            if n > limit:
                raise HttpError(413, f"body is {n} bytes, over the {limit}-byte limit (--max-body-mb)")
        buf = bytearray()

        async def pull() -> None:
            async for chunk in request.stream():
                buf.extend(chunk)
                if len(buf) > limit:
                    raise HttpError(413, f"body is over the {limit}-byte limit (--max-body-mb)")

        try:
            await asyncio.wait_for(pull(), cfg.body_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            st.metrics.timeout("body")
            raise HttpError(408, f"body not received within {cfg.body_timeout_s:g} s") from None
        if not buf:
            raise HttpError(400, "empty body: send the image bytes")
        return bytes(buf)

    async def check(request: Request) -> Response:
        want_mask = request.query_params.get("mask", "0").lower() in ("1", "true", "yes")
        body = await read_body(request)
        name = "<upload>"
        ctype = request.headers.get("content-type") or ""
        if ctype.lower().startswith("multipart/form-data"):
            body, fname = parse_multipart(body, ctype, max_parts=cfg.max_parts)
            name = fname or name
        assert st.slots is not None
        # not wait_for(acquire()): on 3.11 a slot acquired just as the wait times out can be lost
        acq = asyncio.ensure_future(st.slots.acquire())
        done, _ = await asyncio.wait({acq}, timeout=cfg.queue_wait_s)
        if not done:
            acq.cancel()
            try:
                await acq
            except asyncio.CancelledError:
                pass
            else:
                st.slots.release()  # it was acquired as we gave up: give it back
            st.metrics.timeout("queue")
            raise HttpError(503, f"busy: all {cfg.concurrency} slots taken for {cfg.queue_wait_s:g} s; retry later")
        st.metrics.in_flight += 1

        def free(_f: Any) -> None:  # the slot is free when the work ends, not when the client gave up
            st.metrics.in_flight -= 1
            st.slots.release()

        try:
            fut = asyncio.get_running_loop().run_in_executor(
                st.pool, partial(_check_and_trim, st, det, body, name=name, mask="full" if want_mask else "none",
                                 max_pixels=cfg.max_pixels, decode_timeout=cfg.decode_timeout))
        except BaseException:
            free(None)
            raise
        fut.add_done_callback(free)
        del body  # the worker holds it while it needs it
        try:
            v = await asyncio.wait_for(asyncio.shield(fut), cfg.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            st.metrics.timeout("check")
            raise HttpError(504, f"not done within {cfg.timeout_s:g} s (--timeout-s)") from None
        except ImageError as e:
            raise HttpError(422, e.reason) from None
        except DefakerError as e:
            raise HttpError(500, str(e)) from None
        out = v.to_json()
        out["image"] = name
        if out.get("fallback"):
            st.metrics.fallback(out["fallback"])
        if want_mask and v.mask is not None:
            out["mask_png"] = _png_b64(v.mask)  # the binary mask (255 edited) at the package's pixel threshold
            out["heatmap_png"] = _png_b64(v.heatmap)  # the edit probabilities, 0..255
        return JSONResponse(out)

    async def http_error(_: Request, e: Exception) -> Response:
        if isinstance(e, HttpError):
            extra = {"Connection": "close"} if e.status in (408, 413) else {}
            return jerr(e.status, e.message, **extra)
        if isinstance(e, HTTPException):
            msg = {404: "no such endpoint; try POST /v1/check, GET /healthz, /readyz, /v1/model, /metrics, "
                        "/openapi.json, /docs", 405: "method not allowed here (POST /v1/check; GET the others)"}
            return jerr(e.status_code, msg.get(e.status_code, str(e.detail)))
        if isinstance(e, ClientDisconnect):
            return jerr(400, "client disconnected")
        log.exception("internal error")
        return jerr(500, f"internal error: {type(e).__name__}")

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/v1/model", model),
              Route("/metrics", metrics), Route("/openapi.json", spec), Route("/docs", docs),
              Route("/v1/check", check, methods=["POST"])]
    handlers = {HttpError: http_error, HTTPException: http_error, ClientDisconnect: http_error}
    inner = Starlette(routes=routes, exception_handlers=handlers)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await inner(scope, receive, send)
        if scope["type"] != "http":
            return
        if st.slots is None:
            st.slots = asyncio.Semaphore(max(1, cfg.concurrency))
        t0 = time.perf_counter()
        status = [500]
        n_in, n_out = [0], [0]

        async def receive_():
            msg = await receive()
            if msg["type"] == "http.request":
                n_in[0] += len(msg.get("body") or b"")
            return msg

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            elif msg["type"] == "http.response.body":
                n_out[0] += len(msg.get("body") or b"")
            await send(msg)

        path = scope["path"]
        try:
            # h11 bounds only headers that arrive in pieces; one that arrives whole is measured here
            if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > MAX_URL:
                await jerr(414, f"request target over {MAX_URL} bytes")(scope, receive_, send_)
            elif sum(len(k) + len(v) for k, v in scope.get("headers") or []) > MAX_HEADERS:
                await jerr(431, f"request headers over {MAX_HEADERS} bytes")(scope, receive_, send_)
            elif cfg.token and path not in OPEN_PATHS and not _authorized(scope, cfg.token):
                await jerr(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                           **{"WWW-Authenticate": "Bearer"})(scope, receive_, send_)
            else:
                await inner(scope, receive_, send_)
        except Exception:  # a bug must still answer JSON (when nothing was sent yet)
            log.exception("internal error")
            if status[0] == 500:
                await jerr(500, "internal error")(scope, receive_, send_)
        finally:
            known = path if path in PATHS else "other"
            dt = time.perf_counter() - t0
            st.metrics.observe(known, status[0], dt)
            client = scope.get("client")
            _log_access(scope.get("method", "-"), known, status[0], dt, n_in[0], n_out[0],
                        client[0] if client else "-")

    app.state = st  # type: ignore[attr-defined]
    return app


def _check_and_trim(st: _State, det, body: bytes, **kw):
    """det.check in a worker thread; after a large image, freed heap pages go back to the OS."""
    big = len(body) >= TRIM_BYTES
    try:
        v = det.check(body, **kw)
        size = getattr(v, "size", (0, 0))
        big = big or size[0] * size[1] >= TRIM_PIXELS
        return v
    finally:
        del body, kw
        if big and _TRIM is not None:
            _TRIM(0)
            with st.metrics.lock:
                st.metrics.trims += 1


def _authorized(scope, token: str) -> bool:
    for k, v in scope.get("headers") or []:
        if k == b"authorization":
            scheme, _, got = v.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(got.strip().encode(), token.encode())
    return False


# ------------------------------------------------------------------ the protocol: connection limits
def _protocol_class(cfg: ServerConfig, st: _State):
    """uvicorn's h11 protocol with JSON for its own errors, a connection cap and a header deadline."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            if len(st.connections) >= cfg.max_connections:
                body = _json_bytes(503, f"over {cfg.max_connections} open connections; retry later")
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                transport.close()
                with st.metrics.lock:
                    st.metrics.refused += 1
                self._log_protocol(transport, 503, len(body))
                self.transport = transport
                self._refused = True
                return
            self._refused = False
            st.connections.add(self)
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            if getattr(self, "_refused", False):
                return
            st.connections.discard(self)
            self._disarm_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if getattr(self, "_refused", False):
                return
            super().data_received(data)

        # The request's headers must be complete within header_timeout_s of the connection opening
        # (or of the previous response). uvicorn's keep-alive timer restarts on every byte, so a
        # client trickling one byte a second would hold its connection for ever.
        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(cfg.header_timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            t = getattr(self, "_header_timer", None)
            if t is not None:
                t.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                n = 0
                if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                    body = _json_bytes(408, f"request headers not received within {cfg.header_timeout_s:g} s")
                    self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                                         b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    n = len(body)
                self.transport.close()
                st.metrics.timeout("header")
                st.metrics.observe("-", 408, cfg.header_timeout_s)
                self._log_protocol(self.transport, 408, n, cfg.header_timeout_s)

        def _log_protocol(self, transport, status: int, n_out: int, seconds: float = 0.0) -> None:
            """An answer the app never saw (the request never arrived whole): logged with path '-'."""
            peer = transport.get_extra_info("peername")
            _log_access("-", "-", status, seconds, 0, n_out, peer[0] if peer else "-")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def send_400_response(self, msg: str) -> None:  # the HTTP parser's errors, as JSON
            body = _json_bytes(400, "invalid HTTP request (malformed, or request line/headers over 64 KB)")
            event = h11.Response(status_code=400, reason=b"Bad Request",
                                 headers=[(b"content-type", b"application/json"), (b"connection", b"close"),
                                          (b"content-length", str(len(body)).encode())])
            try:
                self.transport.write(self.conn.send(event) + self.conn.send(h11.Data(data=body))
                                     + self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:  # a response was already under way
                pass
            self.transport.close()
            st.metrics.observe("-", 400, 0.0)
            self._log_protocol(self.transport, 400, len(body))

    return Protocol


# ------------------------------------------------------------------ running it
def _need_deps() -> None:
    for mod, pkg in (("starlette", "starlette"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart")):
        try:
            __import__(mod)
        except ImportError:
            raise MissingDependencyError(pkg, "defaker serve",
                                         "reinstall defaker-edge, or: pip install starlette uvicorn python-multipart") from None


class DefakerServer:
    """A bound server: `server_address`, `serve_forever()` (blocks; SIGTERM drains it when run in the
    main thread), `shutdown()` (from another thread: drain and return) and `server_close()`."""

    def __init__(self, detector, cfg: ServerConfig):
        _need_deps()
        import uvicorn

        if cfg.host not in LOOPBACK and not cfg.token:
            raise DefakerError(f"--host {cfg.host} is reachable from the network: give --token T "
                               f"(or set {TOKEN_ENV}); clients then send 'Authorization: Bearer T'")
        self.detector = detector
        self.cfg = cfg
        self.state = _State(detector, cfg)
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((cfg.host, cfg.port))
            self.socket.listen(BACKLOG)
        except OSError as e:
            self.socket.close()
            raise DefakerError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e})") from None
        self.server_address = self.socket.getsockname()
        app = build_app(detector, cfg, self.state)
        config = uvicorn.Config(app, http=_protocol_class(cfg, self.state), lifespan="off", log_config=None,
                                access_log=False, timeout_keep_alive=cfg.keepalive_s, backlog=BACKLOG,
                                timeout_graceful_shutdown=cfg.drain_s, ws="none", interface="asgi3",
                                h11_max_incomplete_event_size=64 * 1024)
        self.uvicorn = _uvicorn_server()(config)
        self._done = threading.Event()

    def serve_forever(self) -> int:
        """Serve until shut down; 0 after a clean drain, 1 when checks were still running at its end."""
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            cut = self.state.metrics.in_flight
            self.state.pool.shutdown(wait=False, cancel_futures=True)
            self._done.set()
        if cut:
            log.warning("defaker serve: %d check(s) still running after --drain-s %g s", cut, self.cfg.drain_s)
            return 1
        return 0

    def shutdown(self, timeout: float = 30.0) -> None:
        self.uvicorn.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def _uvicorn_server():
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM after its graceful shutdown, so the process ends by
        the signal (exit -15). A SIGTERM drain is the expected way to stop a service: forget it, and
        serve() returns its status (0 after a clean drain). SIGINT still ends as an interrupt."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    return Server


def setup_access_log(dest: str | None) -> None:
    """Send the access log's JSON lines, bare (no level or logger name), to stderr ("-") or a file
    (appended); "off" drops them; None leaves the logger as the application configured it."""
    if dest is None:
        return
    for h in list(access_log.handlers):
        access_log.removeHandler(h)
    access_log.propagate = False
    if dest == "off":
        access_log.disabled = True
        return
    access_log.disabled = False
    import sys

    h = logging.StreamHandler(sys.stderr) if dest == "-" else logging.FileHandler(dest, encoding="utf-8")
    h.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(h)
    access_log.setLevel(logging.INFO)


def make_server(detector, cfg: ServerConfig | None = None) -> DefakerServer:
    """A bound server (port 0 picks a free one: see server.server_address); call serve_forever()."""
    return DefakerServer(detector, cfg or ServerConfig())


def serve(detector, cfg: ServerConfig | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a clean drain)."""
    cfg = cfg or ServerConfig()
    if cfg.token is None:
        cfg.token = os.environ.get(TOKEN_ENV) or None
    try:
        setup_access_log(cfg.access_log)
    except OSError as e:
        raise DefakerError(f"--access-log {cfg.access_log}: cannot open ({e.strerror or e})") from None
    srv = make_server(detector, cfg)
    host, port = srv.server_address[:2]
    log.info("defaker serve: http://%s:%d  (%s)", host, port, detector.backend.describe())
    try:
        return srv.serve_forever()
    finally:
        srv.server_close()
