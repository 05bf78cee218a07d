"""`defaker serve`: a small HTTP API on the standard library's ThreadingHTTPServer (no new deps).

Limits, each with its own status code so a client knows what to change: body size (413), image
pixels (422, with the decoder's message), concurrency (a semaphore; 503 after a short wait, so a
burst queues briefly instead of piling threads onto the model) and time (504). Detection runs in a
fixed pool of `concurrency` workers; a slot is released when its work really ends, not when the
client gave up, so timeouts cannot oversubscribe the model. Every error is JSON.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ..errors import DefakerError, ImageError

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_mb: float = 50.0
    max_pixels: int = 40_000_000
    concurrency: int = 4
    queue_wait_s: float = 10.0
    timeout_s: float = 60.0


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_multipart(body: bytes, content_type: str, field: str = "image") -> tuple[bytes, str | None]:
    """(file bytes, filename) of `field` in a multipart/form-data body (email package; cgi is gone in 3.13)."""
    from email import policy
    from email.parser import BytesParser

    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n"
    msg = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise HttpError(400, "malformed multipart/form-data body")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == field:
            data = part.get_payload(decode=True)
            if not data:
                raise HttpError(400, f"multipart field {field!r} is empty")
            return data, part.get_filename()
    raise HttpError(400, f"multipart/form-data without a field named {field!r}")


def _png_b64(mask) -> str:
    import numpy as np
    from PIL import Image

    if mask.dtype != np.uint8:
        mask = np.clip(np.rint(mask.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _Handler(BaseHTTPRequestHandler):
    server_version = "defaker-edge"
    server: "DefakerHTTPServer"

    def log_message(self, fmt: str, *a) -> None:  # route access logs through logging (stderr, quiet by default)
        log.debug("%s " + fmt, self.address_string(), *a)

    def _send(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message, "status": status})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        det = self.server.detector
        if path == "/healthz":
            self._send(200, {"status": "ok", "backend": det.backend.name, "precision": det.backend.precision})
        elif path == "/v1/model":
            self._send(200, {**det.package.summary(), "runtime": {k: v for k, v in det.info().items() if k != "package"}})
        elif path == "/v1/check":
            self._error(405, "use POST /v1/check with the image as the body")
        else:
            self._error(404, f"no such endpoint {path}; try POST /v1/check, GET /healthz, GET /v1/model")

    def do_POST(self) -> None:
        try:
            self._check()
        except HttpError as e:
            self._error(e.status, e.message)
        except Exception as e:  # a bug must still answer JSON, not drop the connection
            log.exception("internal error")
            self._error(500, f"internal error: {type(e).__name__}")

    def _body(self) -> bytes:
        cfg = self.server.cfg
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise HttpError(411, "chunked bodies are not accepted; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise HttpError(411, "Content-Length required")
        try:
            n = int(raw)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        limit = int(cfg.max_body_mb * 1024 * 1024)
        if n > limit:
            self.close_connection = True  # do not read (or wait for) a body we will not use
            raise HttpError(413, f"body is {n} bytes, over the {limit}-byte limit (--max-body-mb)")
        if n <= 0:
            raise HttpError(400, "empty body: send the image bytes")
        return self.rfile.read(n)

    def _check(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/v1/check":
            raise HttpError(404, f"no such endpoint {url.path}")
        q = parse_qs(url.query)
        want_mask = (q.get("mask") or ["0"])[0].lower() in ("1", "true", "yes")
        body = self._body()
        name = "<upload>"
        ctype = self.headers.get("Content-Type") or ""
        if ctype.lower().startswith("multipart/form-data"):
            body, fname = parse_multipart(body, ctype)
            name = fname or name
        srv = self.server
        if not srv.slots.acquire(timeout=srv.cfg.queue_wait_s):
            raise HttpError(503, f"busy: all {srv.cfg.concurrency} slots taken for {srv.cfg.queue_wait_s:g} s; retry later")
        try:
            fut = srv.pool.submit(srv.detector.check, body, name=name, mask="full" if want_mask else "none",
                                  max_pixels=srv.cfg.max_pixels)
        except BaseException:
            srv.slots.release()
            raise
        fut.add_done_callback(lambda _f: srv.slots.release())
        try:
            v = fut.result(timeout=srv.cfg.timeout_s)
        except FutureTimeout:
            raise HttpError(504, f"not done within {srv.cfg.timeout_s:g} s (--timeout-s)") from None
        except ImageError as e:
            raise HttpError(422, e.reason) from None
        except DefakerError as e:
            raise HttpError(500, str(e)) from None
        out = v.to_json()
        out["image"] = name
        if want_mask and v.mask is not None:
            out["mask_png"] = _png_b64(v.mask)
        self._send(200, out)


class DefakerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, detector, cfg: ServerConfig):
        self.detector = detector
        self.cfg = cfg
        self.slots = threading.Semaphore(max(1, cfg.concurrency))
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency), thread_name_prefix="defaker-check")
        super().__init__((cfg.host, cfg.port), _Handler)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_server(detector, cfg: ServerConfig | None = None) -> DefakerHTTPServer:
    """A bound server (port 0 picks a free one: see server.server_address); call serve_forever()."""
    cfg = cfg or ServerConfig()
    try:
        return DefakerHTTPServer(detector, cfg)
    except OSError as e:
        raise DefakerError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e})") from None


def serve(detector, cfg: ServerConfig | None = None) -> None:
    srv = make_server(detector, cfg)
    host, port = srv.server_address[:2]
    log.info("defaker serve: http://%s:%d  (%s)", host, port, detector.backend.describe())
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
