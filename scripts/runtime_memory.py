#!/usr/bin/env python
"""Peak memory of `Detector.check` on one huge image (default 100 megapixels), per mask mode.

Each mode runs in a fresh process (peak RSS, VmHWM, is a per-process high-water mark), and the
test JPEG is written by yet another process, so no measurement carries another's pages.

  python scripts/runtime_memory.py --package PKG                  # 10000 x 10000 pixels
  python scripts/runtime_memory.py --package PKG --megapixels 25 --json

Two kinds of run:
- input=array: the image is built in memory (3 B/px) before the detector runs; `runtime_mb` =
  peak RSS (reset once the image is built) minus RSS with the image held = what the runtime adds
  (one batch of tiles and the model's activations, two float32 planes at 1/4 resolution =
  0.125 B/px each, the full-res mask: 1 B/px uint8, 2 B/px float16).
- input=jpeg: end to end from a JPEG file, as `defaker check` runs; the peak then includes the
  decoder (Pillow holds RGBX, 4 B/px, while the 3 B/px array is copied out).
Tiles are never all held at once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (input, mask, mask dtype)
MODES = [("array", "none", "uint8"), ("array", "quarter", "uint8"), ("array", "full", "uint8"),
         ("array", "full", "float16"), ("jpeg", "full", "uint8")]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """High-water RSS since the process started or since _reset_peak()."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak() -> bool:
    """Reset VmHWM (Linux: write 5 to /proc/self/clear_refs), so building the test image's
    temporaries does not count as the runtime's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def synth_array(megapixels: float, seed: int = 0):
    """A photo-like side x side x 3 uint8 image, built in row blocks (no full-size float temporaries)."""
    import numpy as np

    side = int(round((megapixels * 1e6) ** 0.5))
    rng = np.random.default_rng(seed)
    img = np.empty((side, side, 3), np.uint8)
    x = np.linspace(0, 127, side, dtype=np.float32)[None, :, None]
    gain = np.array([0.3, 0.5, 0.7], np.float32)
    for r in range(0, side, 512):
        y = np.linspace(0, 255, side, dtype=np.float32)[r:r + 512, None, None]
        block = y * gain + x + rng.normal(0, 4, (y.shape[0], side, 3)).astype(np.float32)
        img[r:r + 512] = np.clip(block, 0, 255)
    return img


def make_image(path: str, megapixels: float, seed: int = 0) -> None:
    from PIL import Image

    Image.fromarray(synth_array(megapixels, seed)).save(path, format="JPEG", quality=90)


def measure(package: str | None, image: str | None, megapixels: float, mask: str, mask_dtype: str,
            batch_size: int) -> dict:
    from defaker_edge.runtime import Detector

    det = Detector.load(package, mask=mask, mask_dtype=mask_dtype, batch_size=batch_size,
                        max_pixels=400_000_000)
    after_load = _rss_mb()
    src = image if image else synth_array(megapixels)
    held = _rss_mb()
    reset = _reset_peak() if not image else False
    t = time.perf_counter()
    v = det.check(src)
    secs = time.perf_counter() - t
    peak = _peak_mb()
    return {"input": "jpeg" if image else "array", "mask": mask, "mask_dtype": mask_dtype if mask == "full" else None,
            "height": v.size[0], "width": v.size[1], "megapixels": round(v.size[0] * v.size[1] / 1e6, 1),
            "tiles": v.n_tiles, "batch_size": batch_size, "rss_after_load_mb": round(after_load, 1),
            "peak_rss_mb": round(peak, 1), "peak_reset_before_check": reset,
            "runtime_mb": round(peak - held, 1) if reset else None,
            "seconds": round(secs, 1), "precision": v.precision, "provider": v.provider,
            "mask_shape": list(v.mask.shape) if v.mask is not None else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", help="package dir (default: the installed default package)")
    ap.add_argument("--megapixels", type=float, default=100.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image", help="use this image instead of writing a synthetic JPEG")
    ap.add_argument("--json", action="store_true", help="one JSON line per mode on stdout")
    ap.add_argument("--only", choices=("array", "jpeg"), help="run only this kind of input")
    ap.add_argument("--_measure", nargs=2, metavar=("MASK", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--_make", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._make:
        make_image(a._make, a.megapixels)
        return 0
    if a._measure:
        print(json.dumps(measure(a.package, a.image, a.megapixels, a._measure[0], a._measure[1], a.batch_size)))
        return 0
    modes = [m for m in MODES if a.only in (None, m[0])]
    with tempfile.TemporaryDirectory() as tmp:
        image = a.image
        if not image and any(m[0] == "jpeg" for m in modes):
            image = str(Path(tmp) / "huge.jpg")
            print(f"writing a {a.megapixels:g} MP JPEG ...", file=sys.stderr)
            subprocess.run([sys.executable, __file__, "--_make", image, "--megapixels", str(a.megapixels)], check=True)
        for kind, mask, dt in modes:
            cmd = [sys.executable, __file__, "--batch-size", str(a.batch_size), "--megapixels", str(a.megapixels)]
            cmd += ["--package", a.package] if a.package else []
            cmd += ["--image", image] if kind == "jpeg" else []
            r = subprocess.run(cmd + ["--_measure", mask, dt], capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return r.returncode
            row = json.loads(r.stdout.strip().splitlines()[-1])
            if a.json:
                print(json.dumps(row), flush=True)
            else:
                extra = f", runtime adds {row['runtime_mb']:.0f} MB" if row["runtime_mb"] is not None else ""
                print(f"input={kind:<5} mask={mask:<7} {('(' + dt + ')') if mask == 'full' else '':<9} "
                      f"{row['megapixels']} MP, {row['tiles']} tiles: peak RSS {row['peak_rss_mb']:.0f} MB "
                      f"(after load {row['rss_after_load_mb']:.0f} MB{extra}), {row['seconds']} s on {row['provider']}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
