"""`defaker serve` over real sockets: load, limits and JSON errors."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from defaker_edge.runtime import Detector
from defaker_edge.runtime.server import ServerConfig, make_server, parse_multipart

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import tiny_package  # noqa: E402


def _png(h, w, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _req(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        assert r.getheader("Content-Type") == "application/json"
        return r.status, json.loads(data)
    finally:
        c.close()


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return tiny_package(tmp_path_factory.mktemp("serve") / "pkg")


@pytest.fixture
def server(pkg):
    started = []

    def start(detector=None, **cfg):
        det = detector or Detector.load(pkg, mask="none", mask_dtype="uint8")
        srv = make_server(det, ServerConfig(port=0, **cfg))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        return srv.server_address[1]

    yield start
    for s in started:
        s.shutdown()
        s.server_close()


def test_cli_serve_answers_200_requests_16_at_a_time(pkg):
    proc = subprocess.Popen([sys.executable, "-m", "defaker_edge", "serve", "--package", str(pkg), "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port, deadline = None, time.time() + 60
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                pytest.fail(f"server exited early (rc={proc.poll()})")
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port, "server did not report its address"
        bodies = [_png(64 + 8 * (i % 7), 80 + 8 * (i % 5), seed=i) for i in range(200)]
        with ThreadPoolExecutor(16) as ex:
            results = list(ex.map(lambda b: _req(port, "POST", "/v1/check", b), bodies))
        assert [s for s, _ in results] == [200] * 200
        assert all(0.0 <= r["fake_prob"] <= 1.0 and r["precision"] == "int8-cpu" for _, r in results)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_endpoints_and_mask(server):
    port = server()
    s, h = _req(port, "GET", "/healthz")
    assert s == 200 and h["status"] == "ok" and h["precision"] == "int8-cpu"
    s, m = _req(port, "GET", "/v1/model")
    assert s == 200 and m["model_id"] == "tiny-test" and m["tile"] == 64 and m["runtime"]["provider"]
    s, v = _req(port, "POST", "/v1/check?mask=1", _png(90, 130))
    assert s == 200 and v["height"] == 90 and v["width"] == 130
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(v["mask_png"]))))
    assert mask.shape == (90, 130) and mask.dtype == np.uint8
    s, v = _req(port, "POST", "/v1/check", _png(90, 130))
    assert s == 200 and "mask_png" not in v
    assert _req(port, "GET", "/nope")[0] == 404
    assert _req(port, "GET", "/v1/check")[0] == 405


def test_multipart_upload(server):
    port = server()
    png = _png(70, 70, seed=3)
    assert b"\r\n" in png  # the PNG signature itself: the parser must keep binary bytes intact
    b = "----defakerboundary42"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cat.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{b}--\r\n".encode()
    data, name = parse_multipart(body, f"multipart/form-data; boundary={b}")
    assert data == png and name == "cat.png"
    s, v = _req(port, "POST", "/v1/check", body, {"Content-Type": f"multipart/form-data; boundary={b}"})
    assert s == 200 and v["image"] == "cat.png" and v["width"] == 70
    s, e = _req(port, "POST", "/v1/check", body.replace(b'name="image"', b'name="file"'),
                {"Content-Type": f"multipart/form-data; boundary={b}"})
    assert s == 400 and "image" in e["error"]


def test_limits(server):
    port = server(max_body_mb=0.01, max_pixels=5000)
    s, e = _req(port, "POST", "/v1/check", b"x" * 20000)
    assert s == 413 and "limit" in e["error"]
    flat = io.BytesIO()
    Image.new("RGB", (100, 100)).save(flat, format="PNG")  # small file, 10 000 px > 5 000
    s, e = _req(port, "POST", "/v1/check", flat.getvalue())
    assert s == 422 and "limit" in e["error"]
    s, e = _req(port, "POST", "/v1/check", b"\x89PNG\r\n\x1a\n broken")
    assert s == 422 and e["status"] == 422
    s, e = _req(port, "POST", "/v1/check", b"")
    assert s == 400


class Slow:
    """A stand-in detector that takes `delay` seconds per image, to saturate the server."""

    def __init__(self, delay):
        self.delay = delay
        self.backend = SimpleNamespace(name="slow", precision="fp32", provider="test")
        self.package = SimpleNamespace(summary=lambda: {})

    def info(self):
        return {}

    def check(self, body, **kw):
        time.sleep(self.delay)
        return SimpleNamespace(to_json=lambda: {"fake_prob": 0.1}, mask=None)


def test_busy_is_503_and_slow_is_504(server):
    port = server(Slow(1.0), concurrency=1, queue_wait_s=0.1, timeout_s=5)
    with ThreadPoolExecutor(2) as ex:
        codes = sorted(s for s, _ in ex.map(lambda _: _req(port, "POST", "/v1/check", b"img"), range(2)))
    assert codes == [200, 503]
    port = server(Slow(1.0), concurrency=2, timeout_s=0.2)
    s, e = _req(port, "POST", "/v1/check", b"img")
    assert s == 504 and "0.2" in e["error"]


# ---- issue #19: hostile clients and a production-grade server ----

def _raw(port, data: bytes, wait: float = 10.0) -> bytes:
    """Send raw bytes, return everything the server sends back before closing (or `wait` runs out)."""
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def _json_body(resp: bytes) -> tuple[int, dict]:
    head, _, body = resp.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def test_protocol_errors_are_json(server):
    port = server()
    assert _json_body(_raw(port, b"GARBAGE\r\n\r\n"))[0] == 400
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert _json_body(_raw(port, big))[0] == 431
    long_url = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _json_body(_raw(port, long_url))[0] == 414
    trickled = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000  # never ends: h11's bound
    assert _json_body(_raw(port, trickled))[0] == 400
    s, e = _req(port, "PUT", "/v1/check", b"x")
    assert s == 405 and e["status"] == 405
    s, e = _req(port, "DELETE", "/nope")
    assert s == 404 and "error" in e


def test_multipart_bombs_are_refused_quickly(server):
    port = server()
    b = "bomb"
    tiny = f"--{b}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\ny\r\n".encode()
    body = tiny * 400_000 + f"--{b}--\r\n".encode()  # 20 MB of parts
    s, e = _req(port, "POST", "/v1/check", body, {"Content-Type": f"multipart/form-data; boundary={b}"})
    assert s == 400 and "parts" in e["error"]
    # 2,000 nested multiparts inside the image field: parsed flat, so the image is just not an image
    inner = b"x"
    for i in range(2000):
        bb = f"n{i}"
        inner = (f"--{bb}\r\nContent-Type: multipart/mixed; boundary=n{i - 1}\r\n\r\n".encode() + inner
                 + f"\r\n--{bb}--\r\n".encode())
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"n.bin\"\r\n"
            f"Content-Type: multipart/mixed; boundary=n1999\r\n\r\n").encode() + inner + f"\r\n--{b}--\r\n".encode()
    s, e = _req(port, "POST", "/v1/check", body, {"Content-Type": f"multipart/form-data; boundary={b}"})
    assert s == 422 and "not a supported image" in e["error"]


def test_keep_alive_reuses_one_connection(server):
    port = server()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        socks = set()
        for i in range(5):
            c.request("POST", "/v1/check", body=_png(40, 40, seed=i))
            r = c.getresponse()
            assert r.status == 200 and r.version == 11 and json.loads(r.read())["width"] == 40
            socks.add(id(c.sock))
        assert len(socks) == 1
    finally:
        c.close()


def test_idle_and_slow_clients_are_dropped_and_capped(server):
    import socket

    port = server(max_connections=8, header_timeout_s=1.0)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        time.sleep(0.2)
        # the cap: one more is answered 503 in JSON and closed (a fresh check may need to wait)
        s, e = _json_body(_raw(port, b""))
        assert s == 503 and "connections" in e["error"]
        # the idle ones are dropped at the header deadline (a JSON 408): the server answers normally again
        for s in idle:
            s.settimeout(30)
            assert s.recv(4096).startswith(b"HTTP/1.1 408")
        time.sleep(0.2)
        assert _req(port, "GET", "/healthz")[0] == 200
        # a client that trickles its headers one byte at a time is cut off at the header deadline
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        t0 = time.monotonic()
        closed = False
        for ch in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
            try:
                slow.sendall(bytes([ch]))
            except OSError:
                closed = True
                break
            slow.settimeout(0.1)
            try:
                got = slow.recv(4096)
                if got == b"" or b"408" in got:
                    closed = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                break
            if time.monotonic() - t0 > 8:
                break
        assert closed and time.monotonic() - t0 < 8, "a slow client was never dropped"
        slow.close()
    finally:
        for s in idle:
            s.close()


def test_hostile_uploads_do_not_starve_a_normal_request(server, monkeypatch):
    """Four slow-to-decode JPEGs fill every slot; each stops at the decode limit and frees its slot,
    so a normal request waits at most about that long, not for minutes, and never gets 503."""
    import defaker_edge.data.io as dio
    from test_hostile_input import many_scans

    monkeypatch.setattr(dio, "MAX_JPEG_SCANS", 10**9)  # let the deadline do the work
    hostile = many_scans(3000, size=2000)
    port = server(concurrency=4, decode_timeout=1.0, queue_wait_s=10)
    with ThreadPoolExecutor(5) as ex:
        bad = [ex.submit(_req, port, "POST", "/v1/check", hostile) for _ in range(4)]
        time.sleep(0.3)
        s, v = _req(port, "POST", "/v1/check", _png(50, 60))
        assert s == 200 and v["width"] == 60
        for f in bad:
            s, e = f.result()
            assert s == 422 and "decoding took longer" in e["error"]
    s, m = _req(port, "GET", "/readyz")
    assert s == 200 and m["slots_free"] == 4


def test_readyz_metrics_openapi(server):
    port = server(Slow(1.0), concurrency=1, queue_wait_s=5)
    assert _req(port, "GET", "/readyz")[0] == 200
    with ThreadPoolExecutor(1) as ex:
        f = ex.submit(_req, port, "POST", "/v1/check", b"img")
        time.sleep(0.4)
        s, e = _req(port, "GET", "/readyz")
        assert s == 503 and "busy" in e["error"]
        assert f.result()[0] == 200
    assert _req(port, "GET", "/readyz")[0] == 200
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/plain")
    assert 'defaker_requests_total{path="/v1/check",status="200"} 1' in text
    assert 'defaker_request_duration_seconds_bucket{path="/v1/check",le="+Inf"} 1' in text
    assert "defaker_in_flight 0" in text and "# TYPE defaker_fallbacks_total counter" in text
    s, doc = _req(port, "GET", "/openapi.json")
    assert s == 200 and doc["openapi"].startswith("3.") and "/v1/check" in doc["paths"]


def test_bearer_token(server):
    from defaker_edge.errors import DefakerError

    port = server(token="s3cret")
    s, e = _req(port, "POST", "/v1/check", _png(40, 40))
    assert s == 401 and "token" in e["error"]
    assert _req(port, "POST", "/v1/check", _png(40, 40), {"Authorization": "Bearer wrong"})[0] == 401
    assert _req(port, "POST", "/v1/check", _png(40, 40), {"Authorization": "Bearer s3cret"})[0] == 200
    assert _req(port, "GET", "/healthz")[0] == 200 and _req(port, "GET", "/readyz")[0] == 200
    with pytest.raises(DefakerError, match="--token"):
        make_server(Slow(0), ServerConfig(host="0.0.0.0", port=0))


def _serve_proc(pkg, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "defaker_edge", "serve", "--package", str(pkg), "--port", "0",
                             *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"server exited early (rc={proc.poll()})")
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
            return proc, int(m.group(1))
    proc.kill()
    pytest.fail("server did not report its address")


def test_sigterm_lets_an_in_flight_request_finish(pkg):
    import signal

    proc, port = _serve_proc(pkg)
    try:
        big = _png(1800, 1800, seed=5)  # long enough on the tiny model to be caught in flight
        with ThreadPoolExecutor(1) as ex:
            f = ex.submit(_req, port, "POST", "/v1/check", big)
            deadline = time.time() + 30
            while time.time() < deadline:  # wait until the check holds its slot
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("GET", "/metrics")
                text = c.getresponse().read().decode()
                c.close()
                if "defaker_in_flight 1" in text:
                    break
                time.sleep(0.02)
            else:
                pytest.fail("the request never got in flight")
            proc.send_signal(signal.SIGTERM)
            s, v = f.result(timeout=60)
        assert s == 200 and v["width"] == 1800
        assert proc.wait(timeout=30) == 0  # a clean drain is a normal end, not death by the signal
        with pytest.raises(OSError):
            _req(port, "GET", "/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_load_2000_requests_64_concurrent_no_connection_errors(pkg):
    proc, port = _serve_proc(pkg, "--queue-wait-s", "120", "--timeout-s", "120")
    try:
        body = _png(48, 48, seed=1)
        errors, codes = [], []

        def one(i):
            try:
                return _req(port, "POST" if i % 4 else "GET", "/v1/check" if i % 4 else "/healthz",
                            body if i % 4 else None)[0]
            except Exception as e:  # a reset, refused or timed-out connection
                errors.append(repr(e))
                return None

        with ThreadPoolExecutor(64) as ex:
            codes = list(ex.map(one, range(2000)))
        assert errors == [] and codes.count(200) == 2000
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_server_stack_is_imported_only_when_serving():
    code = ("import sys, defaker_edge.runtime, defaker_edge.runtime.server, defaker_edge.runtime.cli, defaker_edge.cli; "
            "bad = [m for m in ('starlette', 'uvicorn', 'python_multipart', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_slow_body_is_408_json(server):
    import socket

    port = server(body_timeout_s=1.0)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        t0 = time.monotonic()
        out = b""
        while time.monotonic() - t0 < 8 and b"}" not in out:
            try:
                s.sendall(b"x")
            except OSError:
                pass
            s.settimeout(0.5)
            try:
                got = s.recv(4096)
            except socket.timeout:
                continue
            if not got:
                break
            out += got
        status, body = _json_body(out)
        assert status == 408 and "body" in body["error"]
    finally:
        s.close()


# ---- issue #24: /docs, access log, every timeout counted, memory back after a large image ----

def _metrics(port) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()
    finally:
        c.close()


def test_docs_page_is_self_contained(server):
    port = server()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/docs")
    r = c.getresponse()
    page = r.read().decode()
    c.close()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/html")
    for path in ("/v1/check", "/healthz", "/readyz", "/v1/model", "/metrics", "/openapi.json"):
        assert f"{path}</code>" in page
    assert "fake_prob" in page and "<form action='/v1/check'" in page  # the schema and a try-it form
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing from a CDN


def test_access_log_is_one_json_line_per_request(server, caplog):
    import logging

    port = server()
    png = _png(60, 70)
    with caplog.at_level(logging.INFO, logger="defaker_edge.access"):
        assert _req(port, "POST", "/v1/check", png)[0] == 200
        assert _req(port, "GET", "/nope")[0] == 404
        time.sleep(0.2)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "defaker_edge.access"]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [("POST", "/v1/check", 200), ("GET", "other", 404)]
    first = lines[0]
    assert set(first) == {"time", "method", "path", "status", "ms", "bytes_in", "bytes_out", "client"}
    assert first["bytes_in"] == len(png) and 50 < first["bytes_out"] < 2000 and first["client"] == "127.0.0.1"
    assert first["ms"] > 0 and first["time"].endswith("+00:00")
    assert all(len(r.getMessage()) < 400 for r in caplog.records)  # never the image's bytes


def test_every_timeout_is_counted(server):
    import socket

    port = server(Slow(1.0), header_timeout_s=0.5, body_timeout_s=0.5, concurrency=1, queue_wait_s=0.1, timeout_s=0.3)
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)  # sends nothing: header timeout
    try:
        assert idle.recv(4096).startswith(b"HTTP/1.1 408")
    finally:
        idle.close()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)  # half a body: body timeout
    try:
        s.sendall(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        assert b"408" in s.recv(4096)
    finally:
        s.close()
    with ThreadPoolExecutor(2) as ex:  # one check holds the only slot past --timeout-s (504), the other waits (503)
        codes = sorted(f.result()[0] for f in [ex.submit(_req, port, "POST", "/v1/check", b"img") for _ in range(2)])
    assert codes == [503, 504]
    text = _metrics(port)
    for kind in ("header", "body", "queue", "check"):
        assert f'defaker_timeouts_total{{kind="{kind}"}} 1' in text, text
    assert 'defaker_requests_total{path="-",status="408"} 1' in text


def test_memory_is_returned_after_a_large_image(server):
    from defaker_edge.runtime import server as srv_mod

    if srv_mod._TRIM is None:
        pytest.skip("no glibc malloc_trim here")
    port = server()
    assert _req(port, "POST", "/v1/check", _png(64, 64))[0] == 200
    assert "defaker_memory_trims_total 0" in _metrics(port)
    assert _req(port, "POST", "/v1/check", _png(2000, 2100))[0] == 200  # 4.2 MP: over TRIM_PIXELS
    assert "defaker_memory_trims_total 1" in _metrics(port)
