"""Reading a deployment package (docs/INTERFACES.md, "Package"): manifest, file checks, golden data.

numpy + json only: this runs on the device. Nothing here trusts a file it has not hashed: the
Detector calls `verify_file` before it hands a path to a backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import sha256_bytes, sha256_file
from ..errors import ArtifactError
from .schema import check_thresholds, validate
from .tiling import parse_dct

FORMAT = "defaker-package/1"
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu", "fp8")
# The package the wheel installs (DESIGN §10). Resolved from this file so it works from a checkout,
# an editable install and a wheel alike.
DEFAULT_PACKAGE = Path(__file__).resolve().parent.parent / "models" / "default"


@dataclass(frozen=True)
class FileEntry:
    """One row of the manifest's `files` list."""

    path: str
    precision: str
    format: str = "onnx"
    sha256: str | None = None
    bytes: int | None = None
    role: str | None = None
    trt_version: str | None = None
    compute_capability: str | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_engine(self) -> bool:
        return self.format == "tensorrt"

    @property
    def gate(self) -> dict:
        """The file's accuracy-gate record ({passed, forced, deltas, budget, n_images}); {} if none."""
        g = self.raw.get("gate")
        return g if isinstance(g, dict) else {}

    @property
    def forced(self) -> bool:
        """Written although it failed its accuracy gate: never chosen by precision="auto"."""
        return self.gate.get("passed") is False or bool(self.gate.get("forced")) or self.role == "forced"

    def gate_summary(self) -> str:
        """'failed its accuracy gate (forced): dAUC 0.116 (budget 0.005)' for warnings."""
        g = self.gate
        d, b = g.get("deltas") or {}, g.get("budget") or {}
        parts = [f"d{k} {d[k]:+.3f}" + (f" (budget {b[k]:g})" if isinstance(b, dict) and k in b else "")
                 for k in ("image_auc", "pixel_f1") if isinstance(d.get(k), (int, float))]
        return "failed its accuracy gate (forced)" + (": " + ", ".join(parts) if parts else "")

    @property
    def label(self) -> str:
        """Short name used in fallback reasons, e.g. 'int8-cpu' or 'engine int8'."""
        return f"engine {self.precision}" if self.is_engine else self.precision


@dataclass(frozen=True)
class Thresholds:
    temperature: float = 1.0
    threshold: float = 0.5
    band: tuple[float, float] | None = None  # re-run at full precision when lo <= prob <= hi
    pixel_threshold: float = 0.5  # heatmap >= this marks a pixel edited (older packages: 0.5)
    aggregate: str = "max"
    # a band re-run runs at full precision only the tiles whose logit is >= the image's (the max
    # tile's) minus this (raw logits): the only tiles whose FP32 logit could become the maximum.
    # None (older packages): the band's own width in logits
    rerun_margin: float | None = None

    def margin(self) -> float:
        """rerun_margin, or the band's width in raw logits where the package gives none."""
        if self.rerun_margin is not None:
            return self.rerun_margin
        if not self.band:
            return 0.0
        lo, hi = (min(max(p, 1e-12), 1 - 1e-12) for p in self.band)
        return float((math.log(hi / (1 - hi)) - math.log(lo / (1 - lo))) * self.temperature)


@dataclass
class Package:
    """A parsed package directory."""

    root: Path
    manifest: dict
    files: list[FileEntry]
    tile: int
    overlap: int
    input_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    thresholds: Thresholds
    golden_file: str | None
    golden_atol: dict[str, float]
    # the compression-history stream's (frequencies, clip), from input.extra.dct; None: image only
    dct: tuple[int, int] | None = None
    manifest_sha256: str = ""  # which package answered: every Verdict carries it with the model_id
    golden_sha256: str | None = None

    @property
    def package_id(self) -> str | None:
        return self.manifest.get("model_id")

    def path_of(self, entry: FileEntry) -> Path:
        return self.root / entry.path

    def onnx(self, precision: str) -> FileEntry | None:
        """The ONNX file of `precision` the runtime runs (never the pixels graph: see `pixels`)."""
        for f in self.files:
            if f.format == "onnx" and f.precision == precision and f.role != "pixels":
                return f
        return None

    def pixels(self) -> FileEntry | None:
        """The FP32 graph that runs from pixels + table (`export --pixels-graph`), for GPU and TensorRT
        callers; the CPU path keeps the numpy stream, which measured faster."""
        return next((f for f in self.files if f.format == "onnx" and f.role == "pixels"), None)

    def engines(self) -> list[FileEntry]:
        return [f for f in self.files if f.is_engine]

    def summary(self) -> dict[str, Any]:
        """What `GET /v1/model` and `defaker check --help`-style reports show; no paths outside the package."""
        m = self.manifest
        return {
            "format": m.get("format"), "model_id": m.get("model_id"), "manifest_sha256": self.manifest_sha256,
            "created": m.get("created"),
            "tile": self.tile, "overlap": self.overlap,
            "files": [{"path": f.path, "precision": f.precision, "format": f.format, "bytes": f.bytes,
                       "role": f.role, "forced": f.forced} for f in self.files],
            "thresholds": {"temperature": self.thresholds.temperature, "threshold": self.thresholds.threshold,
                           "band": list(self.thresholds.band) if self.thresholds.band else None,
                           "pixel_threshold": self.thresholds.pixel_threshold},
            "metrics": m.get("metrics", {}),
        }


def _thresholds(d: Any, where: Path | str | None = None) -> Thresholds:
    """A thresholds block as Thresholds; ArtifactError naming the field if runtime.schema refuses it."""
    probs = check_thresholds(d)
    if probs:
        raise ArtifactError(f"{where or 'thresholds'}: {probs[0][0]}: {probs[0][1]}")
    band = d.get("band")
    return Thresholds(temperature=float(d["temperature"]), threshold=float(d["threshold"]),
                      band=(float(band[0]), float(band[1])) if band else None, aggregate=d.get("aggregate", "max"),
                      pixel_threshold=float(d.get("pixel_threshold") or 0.5),
                      rerun_margin=None if d.get("rerun_margin") is None else float(d["rerun_margin"]))


def resolve_package_dir(package: str | Path | None) -> Path:
    if package is None:
        root = DEFAULT_PACKAGE
        if not (root / "manifest.json").is_file():
            raise ArtifactError(
                f"no default package installed at {root} (it ships with the release; build one with "
                "`make default-model`, or pass --package PATH / Detector.load(package=PATH))")
        return root
    root = Path(package)
    try:  # Path.is_dir raises (Python 3.11) under a folder the user cannot enter
        if root.is_file() and root.name == "manifest.json":
            root = root.parent
        if not root.is_dir():
            raise ArtifactError(f"{root}: package directory not found")
    except OSError as e:
        raise ArtifactError(f"{root}: cannot read the package ({type(e).__name__}: {e.strerror or e})") from None
    return root


def load_package(package: str | Path | None = None) -> Package:
    """Parse PACKAGE/manifest.json (None = the default package) into a Package; ArtifactError if malformed."""
    root = resolve_package_dir(package)
    mpath = root / "manifest.json"
    try:
        if not mpath.is_file():
            raise ArtifactError(f"{root}: not a package (no manifest.json)")
        raw = mpath.read_bytes()
    except OSError as e:  # a package the user cannot read: one line, not a traceback
        raise ArtifactError(f"{mpath}: cannot read ({type(e).__name__}: {e.strerror or e})") from None
    try:
        m = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{mpath}: must hold a JSON object")
    probs = validate(m)
    if probs:  # one line naming the field; `defaker package verify` lists them all
        _, fld, msg = probs[0]
        more = f" (and {len(probs) - 1} more problem(s): defaker package verify {root})" if len(probs) > 1 else ""
        raise ArtifactError(f"{mpath}: {fld}: {msg}{more}")
    inp = m["input"]
    files = [FileEntry(
        path=f["path"], precision=f["precision"], format=f.get("format", "onnx"),
        sha256=f.get("sha256"), bytes=f.get("bytes"), role=f.get("role"),
        trt_version=None if f.get("trt_version") is None else str(f["trt_version"]),
        compute_capability=None if f.get("compute_capability") is None else str(f["compute_capability"]),
        raw=f) for f in m["files"]]
    golden = m.get("golden") or {}
    atol = {str(k): float(v) for k, v in (golden.get("atol") or {}).items() if v is not None}
    extra = inp.get("extra")  # checked by the schema: dct {freqs, clip, ...} and qtable
    dct = parse_dct(f"{extra['dct']['freqs']},{extra['dct']['clip']}") if extra is not None else None
    return Package(
        root=root, manifest=m, files=files, tile=inp["tile"], overlap=inp.get("overlap", 0),
        input_name=inp.get("name", "image"),
        mean=tuple(inp.get("mean", (0.485, 0.456, 0.406))), std=tuple(inp.get("std", (0.229, 0.224, 0.225))),
        thresholds=_thresholds(m["thresholds"]),
        golden_file=golden.get("file"), golden_atol=atol, dct=dct, manifest_sha256=sha256_bytes(raw),
        golden_sha256=golden.get("sha256"))


def verify_file(pkg: Package, entry: FileEntry) -> str | None:
    """None when the file exists and matches its sha256; else a short reason ('file missing', ...)."""
    path = pkg.path_of(entry)
    if not path.is_file():
        return "file missing"
    if not entry.sha256:
        return "no sha256 in manifest"
    if sha256_file(path) != entry.sha256:
        return "sha256 mismatch"
    return None


@dataclass(frozen=True)
class Golden:
    input_u8: np.ndarray  # uint8 [1, T, T, 3]
    outputs: dict[str, tuple[np.ndarray, np.ndarray]]  # precision -> (fake_logit, mask_logits)
    # the golden tile's luma quantization table [1, 64] (compression-history models); None: none
    qtable: np.ndarray | None = None


def load_golden(pkg: Package) -> Golden | None:
    """The package's golden input and per-precision reference outputs, or None if it ships none."""
    if not pkg.golden_file:
        return None
    path = pkg.root / pkg.golden_file
    if not path.is_file():
        raise ArtifactError(f"{path}: golden file named in the manifest is missing")
    # the golden outputs are what every model file is judged by: they must be the exported ones
    if sha256_file(path) != pkg.golden_sha256:
        raise ArtifactError(f"{path}: sha256 does not match the manifest's golden.sha256")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # np.load raises several types on a damaged zip
        raise ArtifactError(f"{path}: unreadable golden file ({type(e).__name__}: {e})") from None
    if "input_u8" not in data:
        raise ArtifactError(f"{path}: golden file has no input_u8")
    outs = {}
    for k in data:
        if k.startswith("fake_logit__"):
            p = k[len("fake_logit__"):]
            if f"mask_logits__{p}" in data:
                outs[p] = (data[k], data[f"mask_logits__{p}"])
    q = data.get("qtable")
    return Golden(input_u8=data["input_u8"].astype(np.uint8), outputs=outs,
                  qtable=None if q is None else np.asarray(q, np.float32).reshape(-1, 64))


def golden_mismatch(golden: Golden, precision: str, atol: float, fake_logit: np.ndarray,
                    mask_logits: np.ndarray) -> str | None:
    """None when the outputs match the golden reference for `precision` within atol; else why not."""
    if not (np.all(np.isfinite(fake_logit)) and np.all(np.isfinite(mask_logits))):
        return "golden self-test: nan/inf in output"
    ref = golden.outputs.get(precision)
    if ref is None:
        return None  # nothing recorded for this precision: the file's sha256 is the only check
    rf, rm = ref
    if rf.shape != np.shape(fake_logit) or rm.shape != np.shape(mask_logits):
        return (f"golden self-test: output shapes {np.shape(fake_logit)}, {np.shape(mask_logits)} "
                f"!= expected {rf.shape}, {rm.shape}")
    err = max(float(np.max(np.abs(rf - fake_logit))), float(np.max(np.abs(rm - mask_logits))))
    if err > atol:
        return f"golden self-test: max abs error {err:.3g} > atol {atol:.3g}"
    return None
