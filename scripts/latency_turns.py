"""Time a check of one JPEG with several packages and precisions in one process, in turns.

usage: latency_turns.py [--size 1024] [--runs 30] [--threads 2] [--quality 90] NAME=PACKAGE ...

A shared CPU's speed drifts by more than the differences measured here between rows timed minutes
apart, so every (package, precision) runs once per round, round after round, and the medians come
from the same rounds. The image is a photo-like 1024² JPEG (a bundled photo, tiled and saved at
--quality) given as bytes, as a device gets a file: the table is read, the stream computed, verdict
only (no full-size mask). Prints one JSON object: the CPU, the load, and per row the median and p90 ms
and the tiles; ratios against the first package's row of the same precision.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image


def photo_jpeg(size: int, quality: int) -> bytes:
    from defaker_edge.data.io import load_image

    here = os.path.join(os.path.dirname(__file__), "..", "defaker_edge", "assets", "photos", "china.jpg")
    img = load_image(here)
    reps = (-(-size // img.shape[0]), -(-size // img.shape[1]), 1)
    big = np.tile(img, reps)[:size, :size]
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="+", metavar="NAME=PACKAGE")
    ap.add_argument("--precisions", default="int8-cpu,fp32")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality", type=int, default=90)
    a = ap.parse_args(argv)
    from defaker_edge.bench.machine import _cpu_model, load_average
    from defaker_edge.runtime import Detector

    data = photo_jpeg(a.size, a.quality)
    rows, tiles = {}, {}
    for spec in a.packages:
        name, _, path = spec.partition("=")
        for prec in a.precisions.split(","):
            det = Detector.load(path, backend="onnxruntime", precision=prec, fallback="never", threads=a.threads,
                                mask="none")
            tiles[(name, prec)] = det.check(data).n_tiles  # warm-up
            rows[(name, prec)] = (det, [])
    for _ in range(a.runs):
        for (name, prec), (det, times) in rows.items():
            t = time.perf_counter()
            det.check(data)
            times.append((time.perf_counter() - t) * 1e3)
            rows[(name, prec)] = (det, times)
    first = a.packages[0].partition("=")[0]
    out = {"cpu": _cpu_model(), "cores": os.cpu_count(), "load_1min": load_average(), "size": a.size,
           "runs": a.runs, "threads": a.threads, "rows": []}
    for (name, prec), (det, times) in rows.items():
        med = statistics.median(times)
        ref = statistics.median(rows[(first, prec)][1]) if (first, prec) in rows else None
        out["rows"].append({"package": name, "precision": prec, "median_ms": round(med, 1),
                            "p90_ms": round(float(np.percentile(times, 90)), 1), "tiles": tiles[(name, prec)],
                            f"vs_{first}": round(med / ref, 3) if ref else None})
    for name in {r["package"] for r in out["rows"]}:
        ms = {r["precision"]: r["median_ms"] for r in out["rows"] if r["package"] == name}
        if "fp32" in ms and "int8-cpu" in ms:
            out.setdefault("int8_speedup", {})[name] = round(ms["fp32"] / ms["int8-cpu"], 2)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
