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
from ..runtime.schema import ENGINE_KEYS, FILE_KEYS, INPUT_KEYS, REQUIRED_KEYS, validate  # noqa: F401 (re-exported)
from ..runtime.schema import check_thresholds as _check_thresholds

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
    """Every schema problem, from the one validator the runtime's load also uses (runtime.schema)."""
    return [Problem(file or MANIFEST, f"{field}: {msg}") for file, field, msg in validate(m, strict=True)]


def check_thresholds(th: Any) -> list[str]:
    """Sanity of a thresholds.json block (INTERFACES: temperature, threshold, band [lo, hi])."""
    return [f"{field}: {msg}" for field, msg in _check_thresholds(th)]


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
