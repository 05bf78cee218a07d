"""Calibration sets: native-resolution tiles, stratified by domain and label, saved as shards.

Quantization ranges are only as good as the activations seen during calibration, so the set
covers every domain (natural, document, face, aigc) and both labels in equal shares. Tiles are
cut with the runtime's own tiling (origins on the 8x8 JPEG grid, never rescaled), so calibration
sees exactly the statistics the deployed model sees.

Selection (deterministic for a seed):
- quota per domain = --per-domain K, or n // 4 (the four DESIGN domains); each domain's quota is
  split evenly between real and fake (an odd tile goes to fake).
- within a (domain, label) stratum the images are shuffled and the quota is spread over them
  round-robin (each image gives q // m tiles, the first q % m one more), capped by its tile count.
- a fake image with a mask gives tiles that overlap its manipulated pixels first (most overlap
  first, ties by the seeded shuffle): a tile of untouched pixels from a fake image would teach the
  ranges nothing about the forgery traces. Other images give tiles in seeded random order.
Shards are written as zip files with fixed timestamps, so the same inputs give byte-identical
shards and the same manifest sha256.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import sha256_file, tool_versions, utc_now, write_json
from ..errors import ArtifactError, DatasetError

log = logging.getLogger(__name__)

FORMAT = "defaker-calib/1"
SHARD_SIZE = 64  # tiles per shard: 64 x 512^2 x 3 bytes = 48 MiB uncompressed, easy to stream


@dataclass
class CalibConfig:
    data: str  # manifest.jsonl, or a dataset folder
    out: str
    n: int = 512  # total tiles when per_domain is not given
    per_domain: int | None = None  # tiles per domain; overrides n
    tile: int = 512
    overlap: int = 64
    seed: int = 0
    split: str | None = "train"  # held-out splits stay out of calibration; None = every sample


@dataclass
class CalibResult:
    out: Path
    n: int
    counts: dict[str, dict[str, int]]
    sha256: str
    warnings: list[str] = field(default_factory=list)


def _zip_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed zip timestamps so shards are byte-reproducible."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=1)
    tmp.replace(path)


def _tile_order(mask: np.ndarray | None, origins: list[tuple[int, int]], tile: int,
                rng: np.random.Generator) -> list[int]:
    order = list(rng.permutation(len(origins)))
    if mask is None:
        return order
    cover = [int(mask[y:y + tile, x:x + tile].sum()) for (y, x) in origins]
    hit = [i for i in order if cover[i] > 0]
    # stable sort keeps the seeded shuffle among equal coverage
    hit.sort(key=lambda i: -cover[i])
    return hit or order  # an empty mask: fall back to any tile


def _select(samples: list, cfg: CalibConfig, rng: np.random.Generator) -> tuple[list[tuple], list[str]]:
    """[(sample, k tiles)] per stratum, and warnings for missing / under-filled domains."""
    from ..data.dataset import DOMAINS

    quota = cfg.per_domain if cfg.per_domain is not None else max(1, cfg.n // len(DOMAINS))
    warns: list[str] = []
    plan = []
    for dom in DOMAINS:
        in_dom = [s for s in samples if s.domain == dom]
        if not in_dom:
            warns.append(f"domain {dom!r} is missing from the data: calibration will not cover it")
            continue
        for label, q in ((0, quota // 2), (1, quota - quota // 2)):
            group = [s for s in in_dom if s.label == label]
            if not group:
                warns.append(f"domain {dom!r} has no {'fake' if label else 'real'} images")
                continue
            group = [group[i] for i in rng.permutation(len(group))]
            m = len(group)
            for i, s in enumerate(group):
                k = q // m + (1 if i < q % m else 0)
                if k:
                    plan.append((s, k, quota))
    return plan, warns


def build_calibration(cfg: CalibConfig) -> CalibResult:
    """Build a calibration set (see the module docstring); returns what was written."""
    from tqdm import tqdm

    from ..data.dataset import DOMAINS, load_dataset
    from ..data.io import load_dataset_image, load_mask
    from ..runtime.tiling import TileSpec, cut_tiles, tile_origins

    if cfg.tile % 8 or cfg.tile < 32:
        raise DatasetError(f"--tile must be a multiple of 8 and >= 32, got {cfg.tile}")
    if cfg.per_domain is not None and cfg.per_domain < 1:
        raise DatasetError("--per-domain must be >= 1")
    samples = load_dataset(cfg.data)
    if cfg.split is not None and any(s.split is not None for s in samples):
        samples = [s for s in samples if s.split == cfg.split]
        if not samples:
            raise DatasetError(f"{cfg.data}: no samples in split {cfg.split!r} (use --split all)")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ArtifactError(f"{out}: exists and is not a calibration set; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("calib-*.npz"):
        old.unlink()

    rng = np.random.default_rng(cfg.seed)
    plan, warns = _select(samples, cfg, rng)
    spec = TileSpec(tile=cfg.tile, overlap=cfg.overlap)
    T = cfg.tile
    from ..runtime.dct import read_qtable, tile_tables

    tiles, labels, masks, domains, has_mask, origins_all, src_idx = [], [], [], [], [], [], []
    qtables = []  # each tile's luma table (the compression-history stream's input; zeros: none)
    sources = []
    got: dict[tuple[str, int], int] = {}
    for s, k, _ in tqdm(plan, desc="calibration tiles", unit="img", leave=False, disable=None):
        img = load_dataset_image(s.image)
        h, w = img.shape[:2]
        origins = tile_origins(h, w, spec)
        m = load_mask(s.mask, size=(h, w))[0] if (s.mask and s.label) else None
        pick = [origins[i] for i in _tile_order(m, origins, T, rng)[:k]]
        tiles.append(cut_tiles(img, pick, T))
        qtables.append(tile_tables(read_qtable(s.image), pick))
        if m is not None:
            # a mask tile is cut like an image tile (zero where the image is padded)
            mm = np.zeros((len(pick), T, T), dtype=np.uint8)
            for j, (y, x) in enumerate(pick):
                c = m[y:y + T, x:x + T]
                mm[j, :c.shape[0], :c.shape[1]] = c
            masks.append(mm)
        else:
            masks.append(np.zeros((len(pick), T, T), dtype=np.uint8))
        n = len(pick)
        labels += [s.label] * n
        domains += [s.domain] * n
        has_mask += [m is not None or s.label == 0] * n  # a real image's all-zero mask is ground truth
        origins_all += pick
        src_idx += [len(sources)] * n
        got[(s.domain, s.label)] = got.get((s.domain, s.label), 0) + n
        sources.append({"image": s.key or s.image, "sha256": sha256_file(s.image),
                        "mask_sha256": sha256_file(s.mask) if s.mask else None, "tiles": n})
    if not tiles:
        raise DatasetError(f"{cfg.data}: no calibration tiles could be selected")

    quota = cfg.per_domain if cfg.per_domain is not None else max(1, cfg.n // len(DOMAINS))
    counts: dict[str, dict[str, int]] = {}
    for dom in DOMAINS:
        real, fake = got.get((dom, 0), 0), got.get((dom, 1), 0)
        if real + fake == 0:
            continue
        counts[dom] = {"real": real, "fake": fake, "total": real + fake}
        if real + fake < quota:
            warns.append(f"domain {dom!r} is under-filled: {real + fake} of {quota} tiles "
                         f"({real} real, {fake} fake); add images or lower --per-domain")
    for w in warns:
        log.warning("%s", w)

    all_tiles = np.concatenate(tiles)
    all_masks = np.concatenate(masks)
    arr_labels = np.asarray(labels, dtype=np.uint8)
    arr_domains = np.asarray(domains, dtype=np.str_)
    arr_has = np.asarray(has_mask, dtype=bool)
    arr_origins = np.asarray(origins_all, dtype=np.int32).reshape(-1, 2)
    arr_src = np.asarray(src_idx, dtype=np.int32)
    arr_q = np.concatenate(qtables).astype(np.float32)
    shards = []
    h = hashlib.sha256()
    for i, a in enumerate(range(0, len(all_tiles), SHARD_SIZE)):
        b = a + SHARD_SIZE
        name = f"calib-{i:05d}.npz"
        _zip_npz(out / name, {"tiles": all_tiles[a:b], "labels": arr_labels[a:b], "masks": all_masks[a:b],
                              "domains": arr_domains[a:b], "has_mask": arr_has[a:b],
                              # provenance: tile i is sources[source_index[i]] cut at origins[i] = (y0, x0)
                              "origins": arr_origins[a:b], "source_index": arr_src[a:b],
                              "qtables": arr_q[a:b]})
        digest = sha256_file(out / name)
        h.update(digest.encode())
        shards.append({"file": name, "sha256": digest, "n": int(min(b, len(all_tiles)) - a)})
    manifest = {
        "format": FORMAT,
        "created": utc_now(),
        "n": int(len(all_tiles)),
        "tile": T,
        "overlap": cfg.overlap,
        "seed": cfg.seed,
        "split": cfg.split,
        "data": str(Path(cfg.data).resolve()),
        "quota_per_domain": quota,
        "counts": counts,
        "sha256": h.hexdigest(),
        "shards": shards,
        "sources": sources,
        "warnings": warns,
        "tools": tool_versions(),
    }
    write_json(out / "manifest.json", manifest)
    return CalibResult(out=out, n=len(all_tiles), counts=counts, sha256=manifest["sha256"], warnings=warns)
