"""The package manifest's schema: one validator for `defaker package verify` and the runtime's load.

Standard library only (it runs on the device). Every field the runtime reads is checked for type
and range, and a problem is reported as (file, field, message) so that the runtime can refuse a
package with one line naming the field. docs/manifest.schema.json is the same schema as JSON
Schema, for integrators in other languages (tests keep the two in step).

Forward compatibility: unknown keys are accepted everywhere (a newer exporter may add fields), a
`gate` record (top level or per file) only has to be an object, and an `input` spec (top level or a
The package's `input` may carry `extra`: the compression-history stream's inputs beside the image,
{"dct": {shape, dtype, freqs 1..63, clip 1..127, ...}, "qtable": {shape, dtype, ...}} (runtime.dct).
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Any

FORMAT = "defaker-package/1"
SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu", "fp8")
FILE_FORMATS = ("onnx", "tensorrt")
OUTPUT_NAMES = ("fake_logit", "mask_logits")
GRID = 8  # tile origins snap to it (tiling.GRID)
# The loosest golden tolerance each precision may declare (the export stage's defaults). A looser
# one would let a broken model (a constant output, say) pass the load-time self-test.
MAX_ATOL = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1, "int8-cpu": 1e-1, "fp8": 1e-1}
MAX_ENGINE_ATOL = 0.5  # a TensorRT engine's per-file golden_atol (runtime.detector.ENGINE_ATOL)
REQUIRED_KEYS = ("format", "schema_version", "model_id", "created", "input", "outputs", "files", "thresholds",
                 "calibration", "teacher", "metrics", "tools", "golden")
INPUT_KEYS = ("name", "shape", "dtype", "layout", "color", "scale", "mean", "std", "tile", "overlap", "stride", "grid")
FILE_KEYS = ("path", "sha256", "bytes", "precision", "format")
ENGINE_KEYS = ("trt_version", "compute_capability", "dla_core", "target")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Problem = tuple  # (file or None, field, message)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _inside(p: str) -> bool:
    pp = PurePosixPath(p.replace("\\", "/"))
    return bool(p) and not pp.is_absolute() and ".." not in pp.parts and not re.match(r"^[A-Za-z]:", p)


def check_thresholds(th: Any) -> list[tuple[str, str]]:
    """(field, message) for each fault of a thresholds block (temperature, threshold, band, aggregate)."""
    if not isinstance(th, dict):
        return [("thresholds", f"must be an object, got {th!r}")]
    out = []
    t = th.get("temperature")
    if not _is_num(t) or t <= 0:
        out.append(("thresholds.temperature", f"{t!r} must be a positive number"))
    thr = th.get("threshold")
    if not _is_num(thr) or not 0.0 < thr < 1.0:
        out.append(("thresholds.threshold", f"{thr!r} must be a probability strictly between 0 and 1"))
    if "band" not in th:
        out.append(("thresholds.band", "missing (null means no band: low-precision answers are never re-run)"))
    else:
        band = th["band"]
        if band is None:
            pass
        elif not (isinstance(band, list) and len(band) == 2 and all(_is_num(x) for x in band)):
            out.append(("thresholds.band", f"{band!r} must be [lo, hi] or null"))
        elif not 0.0 <= band[0] <= band[1] <= 1.0:
            out.append(("thresholds.band", f"{band} must satisfy 0 <= lo <= hi <= 1"))
        elif _is_num(thr) and not band[0] <= thr <= band[1]:
            out.append(("thresholds.band", f"{band} does not contain the threshold {thr}"))
    pt = th.get("pixel_threshold")
    if pt is not None and not (_is_num(pt) and 0.0 < pt < 1.0):
        out.append(("thresholds.pixel_threshold", f"{pt!r} must be a probability strictly between 0 and 1"))
    rm = th.get("rerun_margin")
    if rm is not None and not (_is_num(rm) and rm >= 0):
        out.append(("thresholds.rerun_margin", f"{rm!r} must be a number >= 0 (logits) or null"))
    if th.get("aggregate", "max") != "max":
        # the runtime aggregates tiles with max; thresholds calibrated on another rule would not fit
        out.append(("thresholds.aggregate", f"{th.get('aggregate')!r} is not supported (only 'max')"))
    return out


def _check_extra(v: Any, field: str) -> list[tuple[str, str]]:
    """input.extra: the DCT stream's two inputs, each {shape, dtype, ...}; dct also {freqs, clip}."""
    if not isinstance(v, dict):
        return [(field, "must be an object {dct: {...}, qtable: {...}}")]
    out = []
    for name in ("dct", "qtable"):
        x = v.get(name)
        f = f"{field}.{name}"
        if not isinstance(x, dict):
            out.append((f, "must be an object {shape, dtype, ...} (this runtime knows the inputs dct and qtable)"))
            continue
        if not (isinstance(x.get("shape"), list) and all(_is_int(d) for d in x["shape"])):
            out.append((f"{f}.shape", f"{x.get('shape')!r} must be a list of integers (-1 for any)"))
        if not isinstance(x.get("dtype"), str):
            out.append((f"{f}.dtype", f"{x.get('dtype')!r} must be a string such as 'float32'"))
        if name == "dct":
            for k, hi in (("freqs", 63), ("clip", 127)):
                if not _is_int(x.get(k)) or not 1 <= x[k] <= hi:
                    out.append((f"{f}.{k}", f"{x.get(k)!r} must be an integer in [1, {hi}]"))
    unknown = sorted(set(v) - {"dct", "qtable"})
    if unknown:
        out.append((field, f"unknown input(s) {unknown}: this runtime feeds dct and qtable only (a newer package?)"))
    return out


def _check_input(inp: Any, strict: bool) -> list[tuple[str, str]]:
    if not isinstance(inp, dict):
        return [("input", f"must be an object, got {type(inp).__name__}")]
    out = []
    tile = inp.get("tile")
    if not _is_int(tile) or tile <= 0 or tile % 4:
        out.append(("input.tile", f"{tile!r} must be a positive multiple of 4"))
        tile = None
    ov = inp.get("overlap", 0)
    if not _is_int(ov):
        out.append(("input.overlap", f"{ov!r} must be an integer"))
    elif tile is not None and (not 0 <= ov <= tile // 2 or ov % GRID):
        out.append(("input.overlap", f"{ov} must be a multiple of {GRID} in [0, {tile // 2}] for {tile} px tiles"))
    if not isinstance(inp.get("name", "image"), str) or not inp.get("name", "image"):
        out.append(("input.name", f"{inp.get('name')!r} must be a non-empty string"))
    for k in ("mean", "std"):
        v = inp.get(k, [0.5, 0.5, 0.5])
        if not (isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v)):
            out.append((f"input.{k}", f"must be 3 numbers, got {v!r}"))
        elif k == "std" and any(x <= 0 for x in v):
            out.append(("input.std", f"{v} has a non-positive value"))
        elif k == "mean" and any(not 0 <= x <= 1 for x in v):
            out.append(("input.mean", f"{v} must lie in [0, 1] (pixels are scaled to [0, 1] first)"))
    if "extra" in inp:
        out += _check_extra(inp["extra"], "input.extra")
    if strict:
        miss = [k for k in INPUT_KEYS if k not in inp]
        if miss:
            out.append(("input", f"missing {miss}"))
        if tile is not None and inp.get("shape") != [-1, 3, tile, tile]:
            out.append(("input.shape", f"{inp.get('shape')} is not [-1, 3, tile, tile] with tile {tile}"))
    return out


def _check_file(i: int, f: Any, strict: bool) -> list[Problem]:
    if not isinstance(f, dict):
        return [(None, f"files[{i}]", f"must be an object, got {f!r}")]
    path = f.get("path")
    name = path if isinstance(path, str) else None
    out: list[Problem] = []

    def bad(field: str, msg: str) -> None:
        out.append((name, f"files[{i}].{field}", msg))

    if not isinstance(path, str) or not _inside(path):
        bad("path", f"{path!r} must be a relative path inside the package")
    if f.get("precision") not in PRECISIONS:
        bad("precision", f"{f.get('precision')!r} is not one of {list(PRECISIONS)}")
    if f.get("format", "onnx") not in FILE_FORMATS:
        bad("format", f"{f.get('format')!r} is not one of {list(FILE_FORMATS)}")
    if "sha256" in f and not (isinstance(f["sha256"], str) and _HEX64.match(f["sha256"])):
        bad("sha256", f"{f['sha256']!r} must be 64 lowercase hex digits")
    if "bytes" in f and not (_is_int(f["bytes"]) and f["bytes"] >= 0):
        bad("bytes", f"{f['bytes']!r} must be a non-negative integer")
    for k in ("role", "trt_version", "compute_capability"):
        if f.get(k) is not None and not isinstance(f[k], (str, int, float)):
            bad(k, f"{f[k]!r} must be a string")
    if "golden_atol" in f and f["golden_atol"] is not None:
        if not _is_num(f["golden_atol"]) or not 0 <= f["golden_atol"] <= MAX_ENGINE_ATOL:
            bad("golden_atol", f"{f['golden_atol']!r} must be a number in [0, {MAX_ENGINE_ATOL}]")
    if "input" in f:
        own = f["input"]
        if not isinstance(own, dict):
            bad("input", "must be an object")
        else:
            if "format" in own and not isinstance(own["format"], str):
                bad("input.format", f"{own['format']!r} must be a string")
            if "shape" in own and not (isinstance(own["shape"], list) and all(_is_int(d) for d in own["shape"])):
                bad("input.shape", f"{own['shape']!r} must be a list of integers")
    if "gate" in f and f["gate"] is not None and not isinstance(f["gate"], dict):
        bad("gate", "must be an object")
    if strict:
        miss = [k for k in FILE_KEYS if k not in f]
        if miss:
            out.append((name, f"files[{i}]", f"manifest entry lacks {miss}"))
        if f.get("format") == "tensorrt":
            miss = [k for k in ENGINE_KEYS if k not in f]
            if miss or not f.get("trt_version") or not f.get("compute_capability"):
                out.append((name, f"files[{i}]", f"engine entry lacks metadata {miss or ['trt_version/compute_capability']}"))
    return out


def _check_golden(g: Any) -> list[tuple[str, str]]:
    if not isinstance(g, dict):
        return [("golden", f"must be an object with file, sha256 and atol, got {g!r}")]
    out = []
    if not isinstance(g.get("file"), str) or not _inside(g["file"]):
        out.append(("golden.file", f"{g.get('file')!r} must be a relative path inside the package"))
    if not (isinstance(g.get("sha256"), str) and _HEX64.match(g["sha256"])):
        out.append(("golden.sha256", f"{g.get('sha256')!r} must be the golden file's sha256 (64 hex digits)"))
    atol = g.get("atol", {})
    if not isinstance(atol, dict):
        out.append(("golden.atol", f"must be an object {{precision: tolerance}}, got {atol!r}"))
    else:
        for p, v in atol.items():
            if p not in MAX_ATOL:
                out.append((f"golden.atol.{p}", f"unknown precision (one of {list(MAX_ATOL)})"))
            elif v is not None and (not _is_num(v) or not 0 <= v <= MAX_ATOL[p]):
                out.append((f"golden.atol.{p}", f"{v!r} must be a number in [0, {MAX_ATOL[p]:g}] "
                                                f"(a looser tolerance would pass a broken {p} model)"))
    return out


def validate(m: Any, strict: bool = False) -> list[Problem]:
    """Every (file, field, message) wrong with manifest `m`; file is None for the manifest itself.

    strict=False: what the runtime needs (`Detector.load`). strict=True adds what `defaker package
    verify` also requires of a complete package (provenance keys, shapes, outputs, an FP32 file)."""
    if not isinstance(m, dict):
        return [(None, "manifest", "must be a JSON object")]
    out: list[Problem] = []

    def bad(field: str, msg: str) -> None:
        out.append((None, field, msg))

    if m.get("format") != FORMAT:
        bad("format", f"{m.get('format')!r}, this runtime reads {FORMAT!r}")
    out += [(None, f, msg) for f, msg in _check_input(m.get("input"), strict)]
    files = m.get("files")
    if not isinstance(files, list) or not files:
        bad("files", "must be a non-empty list")
    else:
        for i, f in enumerate(files):
            out += _check_file(i, f, strict)
    if "thresholds" not in m:
        bad("thresholds", "missing (temperature, threshold and band decide every verdict)")
    else:
        out += [(None, f, msg) for f, msg in check_thresholds(m["thresholds"])]
    if m.get("golden") is not None or strict:
        out += [(None, f, msg) for f, msg in _check_golden(m.get("golden"))]
    if "gate" in m and m["gate"] is not None and not isinstance(m["gate"], dict):
        bad("gate", "must be an object")
    if strict:
        missing = [k for k in REQUIRED_KEYS if k not in m]
        if missing:
            bad("manifest", f"missing keys {missing}")
        if m.get("schema_version") != SCHEMA_VERSION:
            bad("schema_version", f"{m.get('schema_version')!r}, this reader knows {SCHEMA_VERSION}")
        outs = m.get("outputs")
        if not isinstance(outs, list):
            bad("outputs", "must be a list")
        else:
            names = [o.get("name") for o in outs if isinstance(o, dict)]
            if tuple(names) != OUTPUT_NAMES:
                bad("outputs", f"{names}, expected {list(OUTPUT_NAMES)}")
        for k in ("calibration", "teacher", "metrics", "tools"):
            if k in m and not isinstance(m[k], dict):
                bad(k, f"must be an object, got {type(m[k]).__name__}")
        if isinstance(files, list) and not any(isinstance(f, dict) and f.get("precision") == "fp32"
                                               and f.get("format", "onnx") == "onnx" for f in files):
            bad("files", "no fp32 ONNX file: the full-precision fallback is missing")
    return out
