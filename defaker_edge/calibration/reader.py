"""Read a calibration set written by `build_calibration` (format "defaker-calib/1")."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..artifacts import read_json, sha256_file
from ..errors import ArtifactError

FORMAT = "defaker-calib/1"


@dataclass
class CalibrationSet:
    tiles: np.ndarray  # uint8 [N, T, T, 3]
    labels: np.ndarray  # uint8 [N]
    masks: np.ndarray  # uint8 [N, T, T] 0/1
    domains: np.ndarray  # str [N]
    manifest: dict = field(default_factory=dict)
    path: Path | None = None
    origins: np.ndarray | None = None  # int32 [N, 2] (y0, x0) in the source image
    source_index: np.ndarray | None = None  # int32 [N] into manifest["sources"]
    qtables: np.ndarray | None = None  # float32 [N, 64]: each tile's luma table (sets built before: None)

    def tables(self) -> np.ndarray:
        """[N, 64] luma tables; zeros ("no table") for a set built before they were recorded."""
        return self.qtables if self.qtables is not None else np.zeros((len(self), 64), np.float32)

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def tile(self) -> int:
        return int(self.tiles.shape[1])

    @property
    def sha256(self) -> str:
        return str(self.manifest.get("sha256", ""))

    def batches(self, bs: int = 8, limit: int | None = None) -> Iterator[np.ndarray]:
        """Normalized float32 [b, 3, T, T] batches, in order (the model's input)."""
        from ..runtime.tiling import normalize

        n = len(self) if limit is None else min(limit, len(self))
        for a in range(0, n, bs):
            yield normalize(self.tiles[a:min(a + bs, n)])


def load_calibration(path: str | Path, *, verify: bool = True) -> CalibrationSet:
    """Load every shard; with verify, check each shard's sha256 against the manifest."""
    root = Path(path)
    man = read_json(root / "manifest.json")
    if man.get("format") != FORMAT:
        raise ArtifactError(f"{root}: not a calibration set (format {man.get('format')!r}, want {FORMAT!r})")
    parts: dict[str, list[np.ndarray]] = {"tiles": [], "labels": [], "masks": [], "domains": []}
    extra: dict[str, list[np.ndarray]] = {"origins": [], "source_index": [], "qtables": []}
    h = hashlib.sha256()
    for sh in man.get("shards", []):
        f = root / sh["file"]
        if not f.is_file():
            raise ArtifactError(f"{f}: shard missing")
        if verify:
            digest = sha256_file(f)
            if digest != sh["sha256"]:
                raise ArtifactError(f"{f}: sha256 mismatch (file changed since the set was built)")
            h.update(digest.encode())
        with np.load(f, allow_pickle=False) as z:
            for k in parts:
                parts[k].append(z[k])
            for k in extra:
                if k in z.files:
                    extra[k].append(z[k])
    if not parts["tiles"]:
        raise ArtifactError(f"{root}: calibration set has no shards")
    if verify and h.hexdigest() != man.get("sha256"):
        raise ArtifactError(f"{root}: manifest sha256 does not match its shards")
    cs = CalibrationSet(**{k: np.concatenate(v) for k, v in parts.items()}, manifest=man, path=root,
                        **{k: np.concatenate(v) for k, v in extra.items() if len(v) == len(parts["tiles"])})
    if len(cs) != man.get("n"):
        raise ArtifactError(f"{root}: manifest says n={man.get('n')} but shards hold {len(cs)} tiles")
    return cs
