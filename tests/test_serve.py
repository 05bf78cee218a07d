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
