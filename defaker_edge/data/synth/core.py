"""The synthesis loop: one image per index, seeded by (seed, index), written by 1-2 processes.

Every image depends only on (seed, index, config), never on the worker that made it or on the
order, so the output is byte-identical for a seed whatever the worker count.

Per image: plan (domain, label, split by index) -> size -> authentic content -> benign global
chain (all labels) -> for fakes, one local manipulation (mask = the pixels it changed) ->
final global chain (noise, JPEG 60-100 or PNG; all labels) -> files.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ...artifacts import to_jsonable, tool_versions, write_json
from ..dataset import Sample, write_manifest
from . import aigc
from .config import SynthConfig, SynthConfigError, SynthResult
from .documents import DOCUMENT_OPS, render_document, rescale_items, scan
from .faces import FACE_OPS, render_face, rescale_landmarks
from .manipulations import NATURAL_OPS
from .postprocess import benign, encode_png, finalize, resize
from .regions import changed
from .scenes import natural_source

FORMAT = "defaker-synth/1"
_SPLIT_PERIOD = 20  # groups of (domains x 1 image); 2 val groups and 2 test groups per period: 80/10/10


def plan(index: int, domains: tuple[str, ...]) -> tuple[str, int, str]:
    """(domain, label, split) of an image, from its index only.

    Domains cycle, labels alternate per cycle, and splits are whole cycles, so each split holds
    every domain with both labels (a 24-image run with 4 domains has 8 train, 8 val, 8 test).
    """
    nd = len(domains)
    g = index // nd
    label = g % 2
    pos = g % _SPLIT_PERIOD
    split = "val" if pos in (2, 3) else "test" if pos in (4, 5) else "train"
    return domains[index % nd], label, split


def _size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    # log-uniform side, then an aspect ratio in [1/2, 2] clipped to the range
    h = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    w = int(round(np.clip(h * np.exp(rng.uniform(np.log(0.5), np.log(2.0))), lo, hi)))
    if rng.random() < 0.5:
        h, w = w, h
    return h, w


def _render_size(rng, h: int, w: int, p: float) -> tuple[tuple[int, int], list[str]]:
    """Sometimes render at another scale and resize to (h, w) before manipulating, like a photo
    of a document or a face that was rescaled before it was edited."""
    if rng.random() >= p:
        return (h, w), []
    f = float(rng.uniform(0.7, 1.4))
    return (max(64, int(round(h / f))), max(64, int(round(w / f)))), [f"resize{f:.2f}"]


def choose_op(rng: np.random.Generator, ops: dict) -> str:
    """A manipulation name drawn by the ops' weights (ops: name -> (fn, weight))."""
    names = list(ops)
    p = np.array([ops[k][1] for k in names], np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _manipulate(rng, ops, base, ctx):
    """Run random ops until one changes a meaningful number of pixels (some can be no-ops on flat areas)."""
    h, w = base.shape[:2]
    min_px = max(24, int(2e-4 * h * w))
    best = None
    for _ in range(6):
        kind = choose_op(rng, ops)
        before, after, info = ops[kind][0](rng, base, ctx)
        m = changed(before, after)
        if m.sum() >= min_px:
            return kind, before, after, m, info
        if m.any() and (best is None or m.sum() > best[3].sum()):
            best = (kind, before, after, m, info)
    if best is None:  # pragma: no cover - six no-op manipulations in a row would be a bug
        raise RuntimeError("no manipulation changed any pixel")
    return best


@dataclass
class Rendered:
    """One image before encoding: `before` is the image the manipulation started from (for
    authentic images, the image itself), `after` the image that gets encoded, `mask` the changed
    pixels (all ones for aigc, None for authentic), `line` the manifest fields so far."""
    before: np.ndarray
    after: np.ndarray
    mask: np.ndarray | None
    line: dict
    rng: np.random.Generator


def render(seed: int, index: int, cfg: SynthConfig) -> Rendered:
    """Everything up to (not including) the final global chain and encoding."""
    rng = np.random.default_rng([int(seed), int(index)])
    domain, label, split = plan(index, cfg.domains)
    h, w = _size(rng, cfg.size_min, cfg.size_max)
    meta: dict = {}
    if domain == "natural":
        base, source = natural_source(rng, h, w)
        base, pre = benign(rng, base, cfg.benign_prob, cfg.size_min, cfg.size_max)
        ops, ctx = NATURAL_OPS, source
    elif domain == "document":
        (h0, w0), rs = _render_size(rng, h, w, cfg.benign_prob)
        page, items, layout = render_document(rng, h0, w0)
        base, source = scan(rng, page), f"procedural:document:{layout}"
        if (h0, w0) != (h, w):  # a resized scan: the text boxes follow
            base = resize(base, h, w, rng)
            items = rescale_items(items, h / h0, w / w0, h, w)
        base, pre = benign(rng, base, cfg.benign_prob, cfg.size_min, cfg.size_max, allow_resize=False)
        pre = rs + pre
        ops, ctx = DOCUMENT_OPS, items
    elif domain == "face":
        (h0, w0), rs = _render_size(rng, h, w, cfg.benign_prob)
        base, lm = render_face(rng, h0, w0)
        source = "procedural:face"
        if (h0, w0) != (h, w):
            base = resize(base, h, w, rng)
            lm = rescale_landmarks(lm, h / h0, w / w0, h, w)
        base, pre = benign(rng, base, cfg.benign_prob, cfg.size_min, cfg.size_max, allow_resize=False)
        pre = rs + pre
        ops, ctx = FACE_OPS, lm
    else:  # aigc: photo / scene / face content; the fakes carry generator traces
        if rng.random() < 0.25:
            base, _ = render_face(rng, h, w)
            source = "procedural:face"
        else:
            base, source = natural_source(rng, h, w)
        base, pre = benign(rng, base, cfg.benign_prob, cfg.size_min, cfg.size_max)
        ops, ctx = None, None
    before = base
    if label == 0:
        kind, after, mask = "authentic", base, None
    elif domain == "aigc":
        after, traces = aigc.generate(rng, base)
        kind, mask = "generated", np.ones(after.shape[:2], bool)
        meta["traces"] = traces
    else:
        kind, before, after, mask, info = _manipulate(rng, ops, base, ctx)
        meta.update(info)
    line = {"label": label, "domain": domain, "kind": kind, "split": split, "source": source, "index": index,
            "size": [after.shape[1], after.shape[0]], "pre": pre, **meta}
    return Rendered(before, after, mask, line, rng)


def _photo_render(seed: int, index: int, cfg: SynthConfig):
    """Natural and document images of a --photos run (synth/photo.py): the pixels, the mask, the
    manifest fields, the encoded file and its extension."""
    from . import photo

    rng = np.random.default_rng([int(seed), int(index), 1])
    domain, label, split = plan(index, cfg.domains)
    h, w = _size(rng, cfg.size_min, cfg.size_max)
    if domain == "natural":
        img, mask, meta = photo.natural(rng, photo.corpus(str(cfg.photos)), h, w, label)
    else:
        img, mask, meta = photo.document(rng, h, w, label)
    data, ext, final, mask, post = photo.final_save(rng, img, mask)
    line = {"label": label, "domain": domain, "split": split, "index": index,
            "size": [final.shape[1], final.shape[0]], **meta, **post}
    return data, f".{ext}", mask, line


def make_one(seed: int, index: int, cfg: SynthConfig) -> dict:
    """Generate, encode and write image `index`; return its manifest line (paths relative to out)."""
    if cfg.photos and plan(index, cfg.domains)[0] in ("natural", "document"):
        data, ext, mask, line = _photo_render(seed, index, cfg)
        return _write(cfg, index, data, ext, mask, line, None)
    r = render(seed, index, cfg)
    data, ext, post = finalize(r.rng, r.after, cfg.jpeg_prob, cfg.noise_prob)
    return _write(cfg, index, data, ext, r.mask, r.line, post)


def _write(cfg: SynthConfig, index: int, data, ext: str, mask, line: dict, post) -> dict:
    out = Path(cfg.out)
    stem = f"{index:06d}"
    (out / "images" / f"{stem}{ext}").write_bytes(data)
    mask_rel = None
    extra = {}
    if mask is not None:
        mask_rel = f"masks/{stem}.png"
        (out / mask_rel).write_bytes(encode_png(mask.astype(np.uint8) * 255, level=6).tobytes())
        extra["mask_frac"] = round(float(mask.mean()), 5)
    line = {"image": f"images/{stem}{ext}", "mask": mask_rel, **line, **({"post": post} if post is not None else {}),
            **extra}
    return to_jsonable(line)


def _worker_init():
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


def _job(args):
    seed, index, cfg = args
    t = time.process_time()
    line = make_one(seed, index, cfg)
    return line, time.process_time() - t


def _prepare_out(cfg: SynthConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise SynthConfigError(f"--out {out} exists and is not a directory")
    if (out / "manifest.jsonl").exists():
        if not cfg.overwrite:
            raise SynthConfigError(f"{out} already holds a manifest.jsonl; pass --overwrite to replace it")
        for name in ("images", "masks"):  # ours: stale files from a bigger run must not linger
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("manifest.jsonl", "manifest.json"):
            (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    return out


def synthesize(cfg: SynthConfig) -> SynthResult:
    """Write cfg.n synthetic images (+ masks) and OUT/manifest.jsonl; see the package docstring."""
    from tqdm import tqdm

    cfg.validate()
    out = _prepare_out(cfg)
    n = int(cfg.n)
    workers = cfg.workers or (1 if n < 64 else min(2, os.cpu_count() or 1))
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if workers > 1 and not (main_file and os.path.isfile(main_file)):
        # spawned workers re-import __main__, which cannot be done for `python -` or a REPL;
        # run in-process there (the output does not depend on the worker count)
        workers = 1
    jobs = [(cfg.seed, i, cfg) for i in range(n)]
    t0 = time.perf_counter()
    lines: list[dict] = []
    cpu = 0.0
    pool = None
    if workers > 1:
        # spawn, not fork: a forked child inherits the parent's thread pools (torch/OpenMP,
        # OpenCV) with their locks possibly held, and deadlocked here in a test process that had
        # run torch before. Spawned workers import only this module (numpy/OpenCV/Pillow).
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(workers, initializer=_worker_init)
    bar = tqdm(total=n, desc="synth", unit="img", file=sys.stderr, disable=None if cfg.progress else True, dynamic_ncols=True,
               mininterval=0.5)
    try:
        results = map(_job, jobs) if pool is None else pool.imap_unordered(_job, jobs, chunksize=4)
        for line, c in results:
            lines.append(line)
            cpu += c
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    seconds = time.perf_counter() - t0
    lines.sort(key=lambda d: d["index"])
    samples = []
    root = out.resolve()
    for d in lines:
        meta = {k: v for k, v in d.items() if k not in ("image", "mask", "label", "domain", "kind", "split")}
        samples.append(Sample(image=str(root / d["image"]), label=d["label"], domain=d["domain"],
                              mask=str(root / d["mask"]) if d["mask"] else None, kind=d["kind"],
                              split=d["split"], meta=meta, key=d["image"]))
    manifest = out / "manifest.jsonl"
    write_manifest(manifest, samples)
    counts = {key: dict(sorted(Counter(str(d[key]) for d in lines).items()))
              for key in ("domain", "kind", "label", "split")}
    cfg_json = {k: v for k, v in asdict(cfg).items() if k not in ("out", "workers", "overwrite", "progress")}
    # deterministic: no timestamps or timings, so a rerun with the same seed is byte-identical
    write_json(out / "manifest.json", {
        "format": FORMAT, "what": "synthetic forgeries (images/, masks/, manifest.jsonl)",
        "config": cfg_json, "counts": counts,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "tools": {k: v for k, v in tool_versions(("opencv-python-headless",)).items()}})
    return SynthResult(out=out, manifest=manifest, n=n, counts=counts, seconds=seconds,
                       images_per_s=n / max(seconds, 1e-9), workers=workers, cpu_seconds=cpu)
