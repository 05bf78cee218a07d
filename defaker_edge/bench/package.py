"""What the bench needs from a package directory (docs/INTERFACES.md, "Package"), read-only.

The bench only reads manifest.json: which model files there are (one variant per precision),
the tile geometry and the calibrated thresholds. Verifying hashes and golden outputs is the
runtime's job (`Detector.load`); the bench records the manifest's sha256 so a report names the
exact package it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import read_json, sha256_file
from ..errors import ArtifactError

# The order rows appear in tables: teacher first (added elsewhere), then the student from the
# reference precision down to the most compressed.
PRECISION_ORDER = ("fp32", "fp16", "int8", "int8-cpu", "fp8")


@dataclass(frozen=True)
class Variant:
    precision: str  # fp32 | fp16 | int8 | int8-cpu | fp8 (as the manifest names it)
    path: Path  # absolute
    format: str  # onnx | tensorrt
    bytes: int
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class PackageInfo:
    root: Path
    manifest: dict
    manifest_sha256: str
    model_id: str
    tile: int
    overlap: int
    variants: list[Variant]
    threshold: float  # on the temperature-scaled image probability
    temperature: float
    band: tuple[float, float] | None
    pixel_threshold: float = 0.5  # the binary mask's cut on the heatmap

    def onnx_variants(self) -> list[Variant]:
        return [v for v in self.variants if v.format == "onnx"]

    def forced(self, precision: str) -> bool:
        """The file failed its accuracy gate and was written with --force (its manifest gate record)."""
        v = self.variant(precision)
        return bool(v and is_forced(v.meta))

    def variant(self, precision: str) -> Variant | None:
        for v in self.onnx_variants():
            if v.precision == precision:
                return v
        return None

    def summary(self) -> dict:
        return {"path": _shown(self.root), "model_id": self.model_id, "manifest_sha256": self.manifest_sha256,
                "tile": self.tile, "overlap": self.overlap, "threshold": self.threshold,
                "temperature": self.temperature, "pixel_threshold": self.pixel_threshold,
                "files": [{"precision": v.precision, "path": str(v.path.relative_to(self.root)),
                           "format": v.format, "bytes": v.bytes, "forced": is_forced(v.meta)} for v in self.variants]}


def _shown(path: Path) -> str:
    """The path as the report shows it: relative to the working directory where it lies below it (a
    checkout's `defaker_edge/models/default`, not the machine's absolute path), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def is_forced(entry: dict) -> bool:
    gate = entry.get("gate") if isinstance(entry.get("gate"), dict) else {}
    return gate.get("passed") is False or bool(gate.get("forced")) or entry.get("role") == "forced"


def forced_precisions(report: dict) -> set[str]:
    """Variants a report's package marks as forced (failed their gate); tables and plots flag them."""
    return {f["precision"] for f in (report.get("package") or {}).get("files", []) if f.get("forced")}


def tag(variant: str, forced: set[str]) -> str:
    return f"{variant} (forced: gate failed)" if variant in forced else variant


def _order(v: Variant) -> tuple[int, str]:
    rank = PRECISION_ORDER.index(v.precision) if v.precision in PRECISION_ORDER else len(PRECISION_ORDER)
    return (0 if v.format == "onnx" else 1, f"{rank:02d}{v.precision}")


def read_package(path: str | Path) -> PackageInfo:
    """Read PACKAGE/manifest.json; every model file it lists must exist."""
    root = Path(path).resolve()
    mpath = root / "manifest.json"
    if not root.is_dir() or not mpath.is_file():
        raise ArtifactError(f"{root}: not a package (no manifest.json); build one with `defaker export`")
    m = read_json(mpath)
    if not isinstance(m, dict) or not str(m.get("format", "")).startswith("defaker-package/"):
        raise ArtifactError(f"{mpath}: format is {m.get('format') if isinstance(m, dict) else None!r}, "
                            "expected 'defaker-package/1'")
    inp = m.get("input") or {}
    try:
        tile = int(inp["tile"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{mpath}: input.tile is missing") from None
    overlap = int(inp.get("overlap", 64))
    variants: list[Variant] = []
    missing = []
    for f in m.get("files") or []:
        if not isinstance(f, dict) or "path" not in f or "precision" not in f:
            continue
        p = (root / f["path"]).resolve()
        if not p.is_file():
            missing.append(f["path"])
            continue
        variants.append(Variant(precision=str(f["precision"]), path=p, format=str(f.get("format", "onnx")),
                                bytes=p.stat().st_size, meta=dict(f)))
    if missing:
        raise ArtifactError(f"{root}: manifest lists files that are missing: {', '.join(missing)}")
    if not any(v.format == "onnx" for v in variants):
        raise ArtifactError(f"{mpath}: lists no ONNX model file")
    th = m.get("thresholds") or {}
    band = th.get("band")
    return PackageInfo(
        root=root, manifest=m, manifest_sha256=sha256_file(mpath), model_id=str(m.get("model_id", root.name)),
        tile=tile, overlap=overlap, variants=sorted(variants, key=_order),
        threshold=float(th.get("threshold", 0.5)), temperature=float(th.get("temperature", 1.0)) or 1.0,
        band=(float(band[0]), float(band[1])) if isinstance(band, (list, tuple)) and len(band) == 2 else None,
        pixel_threshold=float(th.get("pixel_threshold") or 0.5))
