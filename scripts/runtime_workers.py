#!/usr/bin/env python
"""Per-image latency of `Detector.check` for each precision and each way of spending the cores.

On a small CPU the runtime can run one tile batch at a time on all threads, or several batches at
once on fewer threads each (`Detector.load(workers=...)`). This times every (precision, workers)
pair on the same seeded images, interleaved round by round so a noisy neighbour slows all alike,
and prints the medians and the INT8 / FP32 ratios per configuration.

  python scripts/runtime_workers.py                       # default package, 1024^2 and 512^2
  python scripts/runtime_workers.py --package PKG --sizes 1024 2048 --rounds 30 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", default=None, help="package dir (default: the installed default package)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8-cpu"])
    ap.add_argument("--workers", nargs="+", type=int, default=None,
                    help="worker counts to compare (default: 1 and the number of cores)")
    ap.add_argument("--sizes", nargs="+", type=int, default=[1024, 512], help="square image sizes (px)")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per configuration (after 3 warm-up)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = ap.parse_args(argv)

    from defaker_edge.runtime import Detector

    cores = os.cpu_count() or 1
    workers = a.workers or sorted({1, cores})
    dets = {}
    for p in a.precisions:
        for w in workers:
            # fallback='never': the variant itself answers (no FP32 re-run inside the band)
            dets[(p, w)] = Detector.load(a.package, backend="onnxruntime", precision=p, fallback="never",
                                         workers=w, mask="none")
    rng = np.random.default_rng(0)
    out: dict = {"cores": cores, "rounds": a.rounds, "sizes": {}}
    for size in a.sizes:
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for d in dets.values():
            for _ in range(3):
                d.check(img)
        ms: dict = {k: [] for k in dets}
        for _ in range(a.rounds):
            for k, d in dets.items():
                t0 = time.perf_counter()
                d.check(img)
                ms[k].append((time.perf_counter() - t0) * 1e3)
        med = {k: statistics.median(v) for k, v in ms.items()}
        row = {"tiles": dets[next(iter(dets))].check(img).n_tiles,
               "p50_ms": {f"{p}/w{w}": round(v, 2) for (p, w), v in med.items()}}
        if "fp32" in a.precisions:
            row["fp32_over"] = {f"{p}/w{w}": round(med[("fp32", w)] / v, 3)
                                for (p, w), v in med.items() if p != "fp32"}
        out["sizes"][str(size)] = row
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"{cores} cores, {a.rounds} rounds, p50 ms per image (Detector.check, verdict only)")
    for size, row in out["sizes"].items():
        print(f"{size}x{size} ({row['tiles']} tiles): " + ", ".join(f"{k} {v}" for k, v in row["p50_ms"].items()))
        if "fp32_over" in row:
            print("  fp32 / variant at the same workers: " + ", ".join(f"{k} {v}x" for k, v in row["fp32_over"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
