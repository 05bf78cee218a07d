"""`defaker data heldout`: an evaluation set made by a generator independent of the training one.

Only split == "heldout" photos are used (packages the training split never sees). Half the images
are authentic and go through exactly the same crop, resize and save chain as the forgeries, so only
the edit tells them apart. Masks are the pixels the edit changed (255), at the image's size.
Parameters deliberately reach outside the usual training ranges (final JPEG 55-99, WebP, PNG,
1-3 recompressions, crops at arbitrary offsets so the camera's 8x8 grid rarely matches the last).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DefakerError

FORMAT = "defaker-heldout/1"
DOMAINS = ("natural", "document")


class HeldoutError(DefakerError):
    """The held-out set cannot be made as asked (no held-out photos, output exists, bad options)."""


@dataclass
class HeldoutConfig:
    photos: str
    out: str
    n: int
    seed: int = 0
    domains: tuple[str, ...] = DOMAINS
    overwrite: bool = False
    progress: bool = True


def generate(cfg: HeldoutConfig) -> dict:
    from .core import Maker

    bad = [d for d in cfg.domains if d not in DOMAINS]
    if bad or not cfg.domains:
        raise HeldoutError(f"--domains: {', '.join(bad) or '(none)'}: choose from {', '.join(DOMAINS)}")
    if cfg.n < 1:
        raise HeldoutError("--n must be at least 1")
    out = Path(cfg.out)
    if (out / "manifest.jsonl").exists():
        if not cfg.overwrite:
            raise HeldoutError(f"{out} already holds a manifest.jsonl; pass --overwrite to replace it")
        for sub in ("images", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    maker = Maker(cfg)
    t0 = time.perf_counter()
    lines = []
    for i in range(cfg.n):
        lines.append(maker.make(i))
        if cfg.progress and ((i + 1) % 25 == 0 or i + 1 == cfg.n):
            dt = time.perf_counter() - t0
            print(f"heldout: {i + 1}/{cfg.n} ({(i + 1) / dt:.2f} images/s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    tmp = out / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp.replace(out / "manifest.jsonl")
    counts: dict[str, int] = {}
    for line in lines:
        key = f"{line['domain']}/{line['kind']}"
        counts[key] = counts.get(key, 0) + 1
    (out / "manifest.json").write_text(json.dumps({
        "format": FORMAT, "what": "held-out forgeries on held-out real photos (images/, masks/, manifest.jsonl)",
        "config": {"n": cfg.n, "seed": cfg.seed, "domains": list(cfg.domains)},
        "photos": maker.photo_ids, "counts": counts}, indent=2) + "\n")
    return {"n": len(lines), "counts": counts, "seconds": seconds}
