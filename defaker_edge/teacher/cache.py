"""Teacher-target cache: the teacher's answers, computed once, read many times by distillation.

Layout of CACHE/:
  manifest.json                         what made it (teacher, data, tile size, features); must agree on resume
  part-<shard>-of-<n>-<chunk>.npz       one chunk of up to `chunk` images, written to a temp name then
                                        renamed, so a chunk file is either complete or absent
There is no separately maintained index: the reader derives it from the chunk files (each stores its
keys), so an interrupted run can never leave an index that disagrees with the data. Resuming
recomputes exactly the chunks that are absent: shard i of n owns samples[i::n], cut into chunks in
manifest order, so the same run always produces the same chunk names; nothing is lost or written twice.
The reader rejects a key found in two files (e.g. runs with different shard counts mixed).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import read_json, sha256_file, tool_versions, utc_now, write_json
from ..errors import ArtifactError

log = logging.getLogger(__name__)
_PART = re.compile(r"^part-(\d{5})-of-(\d{5})-(\d{6})\.npz$")


@dataclass
class TileTarget:
    y0: int
    x0: int
    size: int
    fake_prob: float
    soft_mask: np.ndarray  # float16 [size/4, size/4]


@dataclass
class CacheEntry:
    key: str
    fake_prob: float
    soft_mask: np.ndarray  # float16 [ceil(H/4), ceil(W/4)] probabilities
    tiles: list[TileTarget] = field(default_factory=list)
    features: np.ndarray | None = None  # float16 teacher features when the cache was made with --features


@dataclass
class CacheConfig:
    out: str
    tiles: int | None = None  # also cache per-tile targets on native-resolution tiles of this size
    overlap: int = 64
    features: bool = False
    chunk: int = 32  # images per chunk file
    shard: int = 0
    num_shards: int = 1


def soft_mask_quarter(mask_logits) -> np.ndarray:
    """sigmoid(logits [H, W]) averaged over 4x4 cells -> float16 [ceil(H/4), ceil(W/4)]."""
    import torch
    import torch.nn.functional as F

    p = torch.sigmoid(mask_logits.float())[None, None]
    h, w = p.shape[-2:]
    p = F.pad(p, (0, (-w) % 4, 0, (-h) % 4), mode="replicate")
    return F.avg_pool2d(p, 4)[0, 0].numpy().astype(np.float16)


def shard_from_env(spec: str | None) -> tuple[int, int]:
    """'i/n' from --shard, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if spec:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not m or not (0 <= int(m.group(1)) < int(m.group(2))):
            raise ArtifactError(f"--shard {spec!r}: expected i/n with 0 <= i < n")
        return int(m.group(1)), int(m.group(2))
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is not None and world is not None:
        return int(rank), int(world)
    return 0, 1


def _part_name(shard: int, n: int, chunk: int) -> str:
    return f"part-{shard:05d}-of-{n:05d}-{chunk:06d}.npz"


def _compute(teacher, sample, cfg: CacheConfig) -> dict[str, np.ndarray]:
    from ..data.io import load_dataset_image
    from ..runtime.tiling import TileSpec, cut_tiles, tile_origins

    img = load_dataset_image(sample.image)
    out = teacher.predict(img, return_features=cfg.features)
    rec = {"prob": np.float32(out.fake_prob), "mask": soft_mask_quarter(out.mask_logits)}
    if cfg.features and out.vision_features is not None:
        rec["feat"] = out.vision_features.numpy().astype(np.float16)
    if cfg.tiles:
        origins = tile_origins(img.shape[0], img.shape[1], TileSpec(tile=cfg.tiles, overlap=cfg.overlap))
        tiles = cut_tiles(img, origins, cfg.tiles)
        probs, masks = [], []
        for t in tiles:
            o = teacher.predict(t)
            probs.append(o.fake_prob)
            masks.append(soft_mask_quarter(o.mask_logits))
        rec["tile_yx"] = np.asarray(origins, dtype=np.int32).reshape(-1, 2)
        rec["tile_prob"] = np.asarray(probs, dtype=np.float32)
        rec["tile_mask"] = np.stack(masks)
    return rec


def _write_part(path: Path, keys: list[str], recs: list[dict], tile: int | None) -> None:
    arrays: dict[str, np.ndarray] = {"keys": np.asarray(keys, dtype=str),
                                     "tile_size": np.int32(tile or 0),
                                     "fake_prob": np.asarray([r["prob"] for r in recs], dtype=np.float32)}
    for j, r in enumerate(recs):
        arrays[f"mask_{j}"] = r["mask"]
        for k in ("feat", "tile_yx", "tile_prob", "tile_mask"):
            if k in r:
                arrays[f"{k}_{j}"] = r[k]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: the chunk is complete or absent


def write_cache(teacher, samples, cfg: CacheConfig, *, teacher_id: str = "", data_id: str = "",
                _fail_after: int | None = None) -> "TeacherCache":
    """Compute this shard's missing chunks. `_fail_after` (tests) raises after that many images."""
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    want = {"format": "defaker-teacher-cache/1", "teacher": teacher_id, "data": data_id,
            "tiles": cfg.tiles, "overlap": cfg.overlap if cfg.tiles else None, "features": cfg.features,
            "chunk": cfg.chunk, "num_shards": cfg.num_shards}
    man = out / "manifest.json"
    if man.is_file():
        have = read_json(man)
        diff = [k for k in want if have.get(k) != want[k]]
        if diff:
            raise ArtifactError(f"{out}: existing cache was made with other settings ({', '.join(diff)}); "
                                "use a new --out or the same settings to resume")
    else:
        write_json(man, {**want, "created": utc_now(), "tools": tool_versions()})

    mine = list(samples)[cfg.shard::cfg.num_shards]
    chunks = [mine[i:i + cfg.chunk] for i in range(0, len(mine), cfg.chunk)]
    todo = [(c, ch) for c, ch in enumerate(chunks)
            if not (out / _part_name(cfg.shard, cfg.num_shards, c)).is_file()]
    done_items = 0
    bar = tqdm(total=sum(len(ch) for _, ch in todo), desc=f"teacher cache {cfg.shard}/{cfg.num_shards}",
               unit="img", disable=None)
    for c, ch in todo:
        recs = []
        for s in ch:
            if _fail_after is not None and done_items >= _fail_after:
                raise RuntimeError(f"simulated interruption after {done_items} images")
            recs.append(_compute(teacher, s, cfg))
            done_items += 1
            bar.update(1)
        _write_part(out / _part_name(cfg.shard, cfg.num_shards, c), [s.key for s in ch], recs, cfg.tiles)
    bar.close()
    return TeacherCache(out)


class TeacherCache:
    """Read-only view: len(c), c.keys(), c[key] -> CacheEntry, key in c."""

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise ArtifactError(f"{self.path}: not a teacher cache (no manifest.json)")
        self.manifest = read_json(self.path / "manifest.json")
        self._where: dict[str, tuple[Path, int]] = {}
        dupes = []
        for f in sorted(self.path.iterdir()):
            if not _PART.match(f.name):
                continue
            try:
                with np.load(f) as z:
                    keys = [str(k) for k in z["keys"]]
            except Exception as e:  # a chunk file is complete by construction; anything else is damage
                raise ArtifactError(f"{f}: unreadable cache chunk ({type(e).__name__}: {e})") from None
            for j, k in enumerate(keys):
                if k in self._where:
                    dupes.append(k)
                self._where[k] = (f, j)
        if dupes:
            raise ArtifactError(f"{self.path}: {len(dupes)} key(s) cached twice: {', '.join(dupes[:10])}")
        self._open: tuple[Path, object] | None = None

    def __len__(self) -> int:
        return len(self._where)

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def _z(self, f: Path):
        if self._open is None or self._open[0] != f:
            if self._open is not None:
                self._open[1].close()
            self._open = (f, np.load(f))
        return self._open[1]

    def __getitem__(self, key: str) -> CacheEntry:
        if key not in self._where:
            raise KeyError(key)
        f, j = self._where[key]
        z = self._z(f)
        size = int(z["tile_size"])
        tiles = []
        if f"tile_yx_{j}" in z.files:
            yx, pr, tm = z[f"tile_yx_{j}"], z[f"tile_prob_{j}"], z[f"tile_mask_{j}"]
            tiles = [TileTarget(int(y), int(x), size, float(p), m) for (y, x), p, m in zip(yx, pr, tm)]
        feat = z[f"feat_{j}"] if f"feat_{j}" in z.files else None
        return CacheEntry(key=key, fake_prob=float(z["fake_prob"][j]), soft_mask=z[f"mask_{j}"], tiles=tiles,
                          features=feat)


def cache_inputs_id(data_path) -> str:
    p = Path(data_path)
    m = p if p.is_file() else p / "manifest.jsonl"
    return f"{m}:{sha256_file(m)[:16]}" if m.is_file() else str(p)
