#!/usr/bin/env python
"""RSS of `defaker serve` before and after one large image, with and without giving freed memory
back to the OS (runtime.server: malloc_trim after an image over TRIM_PIXELS).

Each arm runs its own server process: warm it with a small image, read VmRSS, POST the large PNG,
wait, read VmRSS again.

  python scripts/server_memory.py                          # default package, a 39.7 MP PNG
  python scripts/server_memory.py --package PKG --megapixels 20 --json
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import subprocess
import sys
import time

import numpy as np
from PIL import Image

CHILD = """
import sys
import defaker_edge.runtime.server as s
if sys.argv[1] == "off":
    s._TRIM = None
from defaker_edge.cli import main
sys.exit(main(["serve", "--port", "0", "--access-log", "off", "--max-pixels", "100000000", "--timeout-s", "600",
               "--max-body-mb", "500", *sys.argv[2:]]))
"""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def _post(port: int, body: bytes) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    c.request("POST", "/v1/check", body=body)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def _png(w: int, h: int, seed: int = 0) -> bytes:
    # a photo-like image (smooth gradients plus noise) so the PNG is a realistic few MB, not 40
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = (np.sin(x / 97.0) + np.cos(y / 53.0)) * 60 + 128
    a = np.clip(base[..., None] + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def arm(trim: str, big: bytes, package: str | None) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, trim, *(["--package", package] if package else [])],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port = None
        while port is None:
            line = proc.stderr.readline()
            if not line:
                raise SystemExit(f"server exited (rc={proc.poll()})")
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert _post(port, _png(256, 256, 1)) == 200
        before = _rss_mb(proc.pid)
        t = time.perf_counter()
        status = _post(port, big)
        secs = time.perf_counter() - t
        time.sleep(1.0)
        after = _rss_mb(proc.pid)
        _post(port, big)  # a second one: what stays is a bounded pool if it does not grow
        time.sleep(1.0)
        return {"trim": trim, "status": status, "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
                "rss_after_second_mb": round(_rss_mb(proc.pid), 1), "check_s": round(secs, 2)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=None)
    ap.add_argument("--megapixels", type=float, default=39.7)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    w = int((a.megapixels * 1e6 * 4 / 3) ** 0.5)
    h = int(a.megapixels * 1e6 / w)
    big = _png(w, h)
    rows = [arm(t, big, a.package) for t in ("on", "off")]
    if a.json:
        print(json.dumps({"width": w, "height": h, "png_bytes": len(big), "arms": rows}))
        return
    print(f"{w}x{h} PNG, {len(big) / 1e6:.1f} MB")
    for r in rows:
        print(f"malloc_trim {r['trim']:>3}: HTTP {r['status']}, RSS {r['rss_before_mb']:.0f} MB -> "
              f"{r['rss_after_mb']:.0f} MB after the image, {r['rss_after_second_mb']:.0f} MB after a second one "
              f"({r['check_s']:.1f} s each)")


if __name__ == "__main__":
    main()
