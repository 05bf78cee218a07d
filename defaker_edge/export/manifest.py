"""The package manifest: names, reading, and the checks that need no ML framework.

Standard library only (plus defaker_edge.artifacts / errors), so the torch-free runtime reuses it
to read a package and check every file's sha256 at load time. Schema: docs/INTERFACES.md, "Package".
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts import read_json, sha256_file
from ..errors import ArtifactError

FORMAT = "defaker-package/1"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GOLDEN = "golden.npz"
INPUT_NAME = "image"
OUTPUT_NAMES = ("fake_logit", "mask_logits")

# ONNX precisions a package can hold, and the file name each one gets inside the package.
ONNX_FILES = {"fp32": "model_fp32.onnx", "int8": "model_int8.onnx", "int8-cpu": "model_int8_cpu.onnx",
              "fp8": "model_fp8.onnx"}
# Golden tolerance per precision. Why these: FP32 on another CPU differs only by summation order
# (~1e-5); quantized graphs can flip one rounding step of one activation between SIMD kernels
# (VNNI vs AVX2), which moves a logit by about a quantization step, hence a looser bound.
DEFAULT_ATOL = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1, "int8-cpu": 1e-1, "fp8": 1e-1}

REQUIRED_KEYS = ("format", "schema_version", "model_id", "created", "input", "outputs", "files", "thresholds",
                 "calibration", "teacher", "metrics", "tools", "golden")
INPUT_KEYS = ("name", "shape", "dtype", "layout", "color", "scale", "mean", "std", "tile", "overlap", "stride", "grid")
FILE_KEYS = ("path", "sha256", "bytes", "precision", "format")
ENGINE_KEYS = ("trt_version", "compute_capability", "dla_core", "target")


@dataclass
class Problem:
    """One thing wrong with a package; `file` names the offending file (or manifest.json)."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def read_manifest(package: str | os.PathLike) -> dict[str, Any]:
    """PACKAGE/manifest.json as a dict; ArtifactError if it is not a defaker package."""
    path = Path(package) / MANIFEST
    if not Path(package).is_dir():
        raise ArtifactError(f"{package}: not a directory (expected a package written by `defaker export`)")
    m = read_json(path)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a defaker package manifest (format {m.get('format') if isinstance(m, dict) else None!r}, "
                            f"expected {FORMAT!r})")
    return m


def file_entry(package: str | os.PathLike, rel: str, precision: str, fmt: str, role: str, **extra: Any) -> dict[str, Any]:
    """A `files` entry for PACKAGE/rel, hashed now."""
    p = Path(package) / rel
    return {"path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size, "precision": precision,
            "format": fmt, "role": role, **extra}


def check_schema(m: dict[str, Any]) -> list[Problem]:
    out: list[Problem] = []

    def bad(msg: str) -> None:
        out.append(Problem(MANIFEST, msg))

    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        bad(f"missing keys {missing}")
    if m.get("schema_version") != SCHEMA_VERSION:
        bad(f"schema_version {m.get('schema_version')!r}, this reader knows {SCHEMA_VERSION}")
    inp = m.get("input")
    if isinstance(inp, dict):
        miss = [k for k in INPUT_KEYS if k not in inp]
        if miss:
            bad(f"input: missing {miss}")
        tile = inp.get("tile")
        if inp.get("shape") != [-1, 3, tile, tile]:
            bad(f"input shape {inp.get('shape')} is not [-1, 3, tile, tile] with tile {tile}")
        for k in ("mean", "std"):
            v = inp.get(k)
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                bad(f"input.{k} must be 3 numbers, got {v!r}")
        if isinstance(inp.get("std"), list) and any(isinstance(x, (int, float)) and x <= 0 for x in inp["std"]):
            bad("input.std has a non-positive value")
    elif "input" in m:
        bad("input is not an object")
    outs = m.get("outputs")
    if isinstance(outs, list):
        names = [o.get("name") for o in outs if isinstance(o, dict)]
        if tuple(names) != OUTPUT_NAMES:
            bad(f"outputs {names}, expected {list(OUTPUT_NAMES)}")
    elif "outputs" in m:
        bad("outputs is not a list")
    files = m.get("files")
    if not isinstance(files, list) or not files:
        bad("files is empty or not a list")
    else:
        for f in files:
            name = f.get("path", "?") if isinstance(f, dict) else "?"
            if not isinstance(f, dict):
                bad(f"files entry {f!r} is not an object")
                continue
            miss = [k for k in FILE_KEYS if k not in f]
            if miss:
                out.append(Problem(name, f"manifest entry lacks {miss}"))
            if f.get("format") == "tensorrt":
                miss = [k for k in ENGINE_KEYS if k not in f]
                if miss or not f.get("trt_version") or not f.get("compute_capability"):
                    out.append(Problem(name, f"engine entry lacks metadata {miss or ['trt_version/compute_capability']}"))
        if not any(isinstance(f, dict) and f.get("precision") == "fp32" and f.get("format") == "onnx" for f in files):
            bad("no fp32 ONNX file: the full-precision fallback is missing")
    g = m.get("golden")
    if "golden" in m and not (isinstance(g, dict) and g.get("file") and isinstance(g.get("atol"), dict)):
        bad(f"golden must be an object with file and atol, got {g!r}")
    for k in ("calibration", "teacher", "metrics", "tools"):
        if k in m and not isinstance(m[k], dict):
            bad(f"{k} must be an object, got {type(m[k]).__name__}")
    out += [Problem(MANIFEST, f"thresholds: {p}") for p in check_thresholds(m.get("thresholds"))]
    return out


def check_thresholds(th: Any) -> list[str]:
    """Sanity of a thresholds.json block (INTERFACES: temperature, threshold, band [lo, hi])."""
    if not isinstance(th, dict):
        return [f"not an object ({th!r})"]
    probs = []
    t = th.get("temperature")
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        probs.append(f"temperature {t!r} must be a positive number")
    thr = th.get("threshold")
    if not isinstance(thr, (int, float)) or not (0.0 < thr < 1.0):
        probs.append(f"threshold {thr!r} must be a probability strictly between 0 and 1")
    band = th.get("band")
    if not (isinstance(band, list) and len(band) == 2 and all(isinstance(x, (int, float)) for x in band)):
        probs.append(f"band {band!r} must be [lo, hi]")
    elif not (0.0 <= band[0] <= band[1] <= 1.0):
        probs.append(f"band {band} must satisfy 0 <= lo <= hi <= 1")
    elif isinstance(thr, (int, float)) and not (band[0] <= thr <= band[1]):
        probs.append(f"band {band} does not contain the threshold {thr}")
    return probs


def check_files(package: str | os.PathLike, m: dict[str, Any]) -> list[Problem]:
    """Every listed file exists inside the package, has the listed size and sha256."""
    root = Path(package).resolve()
    out: list[Problem] = []
    for f in m.get("files") or []:
        if not isinstance(f, dict) or "path" not in f:
            continue
        rel = f["path"]
        p = (root / rel).resolve()
        if root not in p.parents:
            out.append(Problem(rel, "path leaves the package directory"))
            continue
        if not p.is_file():
            out.append(Problem(rel, "missing"))
            continue
        if "bytes" in f and p.stat().st_size != f["bytes"]:
            out.append(Problem(rel, f"size {p.stat().st_size} bytes, manifest says {f['bytes']}"))
        digest = sha256_file(p)
        if digest != f.get("sha256"):
            out.append(Problem(rel, f"sha256 mismatch (file {digest[:12]}..., manifest {str(f.get('sha256'))[:12]}...)"))
    g = m.get("golden")
    if isinstance(g, dict) and g.get("file"):
        gp = root / g["file"]
        if not gp.is_file():
            out.append(Problem(g["file"], "golden file missing"))
        elif g.get("sha256") and sha256_file(gp) != g["sha256"]:
            out.append(Problem(g["file"], "sha256 mismatch"))
    return out


def verify_hashes(package: str | os.PathLike) -> dict[str, Any]:
    """For loaders: read the manifest and check every file's sha256; ArtifactError naming each bad file."""
    m = read_manifest(package)
    probs = check_files(package, m)
    if probs:
        raise ArtifactError(f"{package}: " + "; ".join(str(p) for p in probs))
    return m


def onnx_files(m: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in m.get("files", []) if isinstance(f, dict) and f.get("format") == "onnx"]
