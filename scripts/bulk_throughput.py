#!/usr/bin/env python
"""Images per second of `defaker bulk` (Ray Data, local) against `defaker check` on the same images
and the same machine.

Each command runs as a user runs it (a fresh process: interpreter, package load, and for bulk Ray's
start) on N and on 2N images; the end-to-end rate is N / wall(N), the steady rate N / (wall(2N) -
wall(N)), which cancels the fixed start-up costs. A third arm runs `check` with
OPENBLAS_NUM_THREADS=1, as Ray runs its workers (OMP_NUM_THREADS=1): numpy's OpenBLAS threads (the
compression-history stream's DCT matmul) otherwise compete with ONNX Runtime's for the cores. Each wall time is the best of --repeats runs
(taken in turns), as other load on the machine only ever adds time.

  python scripts/bulk_throughput.py                 # the samples/ images, copied to N = 56 files
  python scripts/bulk_throughput.py --n 112 --package PKG --json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _folder(d: Path, n: int) -> Path:
    d.mkdir(parents=True)
    samples = sorted((ROOT / "samples").glob("*.jpg"))
    for i in range(n):
        src = samples[i % len(samples)]
        shutil.copy(src, d / f"{i:05d}-{src.name}")
    return d


def _run(cmd: list[str], env: dict | None = None) -> float:
    import os

    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "defaker_edge", *cmd], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **(env or {})})
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])}: exit {r.returncode}\n{r.stderr[-2000:]}")
    return dt


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=56)
    ap.add_argument("--package", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    pkg = ["--package", a.package] if a.package else []
    tmp = Path(tempfile.mkdtemp(prefix="defaker-bulk-bench-"))
    try:
        dirs = {n: _folder(tmp / f"in{n}", n) for n in (a.n, 2 * a.n)}
        walls: dict[str, dict[int, float]] = {"check": {}, "check_blas1": {}, "bulk": {}}
        for r in range(a.repeats):
            for n, d in dirs.items():
                t = _run(["check", str(d), "--json", "-q", *pkg])
                walls["check"][n] = min(t, walls["check"].get(n, t))
                t = _run(["check", str(d), "--json", "-q", *pkg], {"OPENBLAS_NUM_THREADS": "1"})
                walls["check_blas1"][n] = min(t, walls["check_blas1"].get(n, t))
                t = _run(["bulk", str(d), "--out", str(tmp / f"out{n}-{r}"), "-q", *pkg])
                walls["bulk"][n] = min(t, walls["bulk"].get(n, t))
        rows = {}
        for k, w in walls.items():
            steady = w[2 * a.n] - w[a.n]
            rows[k] = {"wall_s": {str(n): round(t, 2) for n, t in w.items()},
                       "end_to_end_img_s": round(2 * a.n / w[2 * a.n], 2),
                       "steady_img_s": round(a.n / steady, 2) if steady > 0 else None}
        out = {"cpu": _cpu(), "cores": __import__("os").cpu_count(), "n": [a.n, 2 * a.n], "repeats": a.repeats,
               "load_avg": __import__("os").getloadavg()[0], **rows}
        if a.json:
            print(json.dumps(out))
        else:
            print(f"{out['cpu']}, {out['cores']} cores (load average {out['load_avg']:.1f}); images: {a.n} and "
                  f"{2 * a.n} copies of samples/*.jpg; best of {a.repeats}")
            for k in ("check", "check_blas1", "bulk"):
                r = out[k]
                print(f"defaker {k:11s}: wall {r['wall_s']} s; end to end {r['end_to_end_img_s']} img/s "
                      f"({2 * a.n} images); steady {r['steady_img_s']} img/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
