"""The package writer (student + quantized variants -> PACKAGE/) and its verifier.

A package is written into a temporary sibling directory, verified, and only then renamed into
place: a failed export never leaves a half package where the runtime would find it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifacts import publish_mode, read_json, sha256_file, tool_versions, utc_now, write_json
from ..errors import ArtifactError, DefakerError
from ..runtime.tiling import (DCT_NHWC, MEAN, NORMALIZED, PIXELS, RAW_FILL, STD, TileSpec, check_layout, dct_dtype,
                              dct_shape, input_dtype, input_shape, normalize)
from .pixels_graph import PIXELS_FILE, PIXELS_ROLE, pixels_agreement, write_pixels_model
from .manifest import (DEFAULT_ATOL, FORMAT, GOLDEN, INPUT_NAME, MANIFEST, ONNX_FILES, OUTPUT_NAMES, SCHEMA_VERSION,
                       Problem, check_files, check_schema, file_entry, onnx_files, read_manifest)

log = logging.getLogger(__name__)

QUANT_PRECISIONS = ("int8", "int8-cpu", "fp8")
# Used only where the student dir has no thresholds.json: the plain 0.5 decision with an empty
# uncertainty band, marked uncalibrated so nobody mistakes it for a measured operating point.
DEFAULT_THRESHOLDS = {"temperature": 1.0, "threshold": 0.5, "band": [0.5, 0.5], "target_fpr": None,
                      "aggregate": "max", "calibrated": False}


@dataclass
class ExportConfig:
    model: str  # student dir (config.json + model.safetensors [+ thresholds.json, report.json])
    out: str  # package dir to write
    quantized: list[str] = field(default_factory=list)  # quantize output dirs (model.onnx + manifest.json)
    opset: int = 17
    tile: int | None = None  # None: the student's own tile
    data: str | None = None  # dataset manifest for real validation / golden tiles (else a generated image)
    atol: float = 1e-3
    rtol: float = 1e-3
    n_random: int = 4
    seed: int = 0
    simplify: bool = True
    model_id: str | None = None
    force: bool = False  # replace an existing package at `out`
    overlap: int | None = None  # tile overlap; None: the thresholds' own, else min(64, tile // 4)
    pixels_graph: bool = False  # also the FP32 graph that runs from pixels + table (export.pixels_graph)
    # how the files take the DCT stream: uint8 channels-last (export.stream_layout), or the PyTorch
    # export's float32 NCHW for a caller built against packages from before it
    dct_layout: str = DCT_NHWC


@dataclass
class Package:
    path: Path
    manifest: dict[str, Any]
    validation: dict[str, Any]

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.manifest["files"]


@dataclass
class VerifyReport:
    path: str
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    # "verified by <keyid>" | "present, not checked (no trusted key)" | "unsigned" | "failed"
    signature: str = "unsigned"

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def failing_files(self) -> list[str]:
        return sorted({p.file for p in self.problems})

    def to_json(self) -> dict[str, Any]:
        return {"package": self.path, "ok": self.ok, "checked": self.checked,
                "failing_files": self.failing_files, "problems": [p.to_json() for p in self.problems],
                "signature": self.signature}


def _cfg(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def load_student_dir(model_dir: str | os.PathLike):
    """(model, cfg) through defaker_edge.student.load_student, with a clear error where it is absent."""
    if not (Path(model_dir) / "config.json").is_file():
        raise ArtifactError(f"{model_dir}: not a student directory (no config.json)")
    try:
        from ..student import load_student
    except ImportError as e:
        raise ArtifactError(f"cannot load {model_dir}: defaker_edge.student is not available ({e})") from None
    return load_student(model_dir)


def _read_quantized(qdir: str | os.PathLike) -> tuple[str, Path, dict[str, Any]]:
    qdir = Path(qdir)
    onnx_path = qdir / "model.onnx"
    if not onnx_path.is_file():
        raise ArtifactError(f"{qdir}: not a quantize output (no model.onnx)")
    qm = read_json(qdir / MANIFEST)
    p = qm.get("precision")
    if p not in QUANT_PRECISIONS:
        raise ArtifactError(f"{qdir / MANIFEST}: precision {p!r}, expected one of {', '.join(QUANT_PRECISIONS)}")
    return p, onnx_path, qm


def _find(d: Any, *keys: str) -> Any:
    """First present key (dotted paths allowed) in a dict; tolerant of how upstream stages nest things."""
    for k in keys:
        cur = d
        for part in k.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur not in (None, "", {}):
            return cur
    return None


def _provenance(model_dir: Path, quant: list[dict[str, Any]]) -> tuple[dict, dict, dict]:
    """(calibration, teacher, metrics) from the quantize manifests and the student's report.json."""
    report = read_json(model_dir / "report.json") if (model_dir / "report.json").is_file() else {}
    cal: dict[str, Any] = {"sha256": None, "n": None}
    teacher: dict[str, Any] = {"id": None, "sha256": None}
    metrics: dict[str, Any] = {}
    for src in (*quant, report):
        c = _find(src, "calibration")
        if isinstance(c, dict):
            cal["sha256"] = cal["sha256"] or c.get("sha256")
            cal["n"] = cal["n"] or c.get("n")
        cal["sha256"] = cal["sha256"] or _find(src, "calibration_sha256", "calib_sha256")
        if isinstance(c, str):
            cal["sha256"] = cal["sha256"] or c
        t = _find(src, "teacher")
        if isinstance(t, dict):
            teacher["id"] = teacher["id"] or t.get("id") or t.get("preset") or t.get("path") or t.get("spec")
            teacher["sha256"] = teacher["sha256"] or t.get("sha256")
            # the compression chain's figures (distill.chain via scripts/chain.sh): what the student
            # was distilled from and how much of the teacher each step kept, on the held-out set
            for k in ("role", "heldout", "chain"):
                if t.get(k) is not None:
                    teacher.setdefault(k, t[k])
        elif isinstance(t, str):
            teacher["id"] = teacher["id"] or t
        teacher["id"] = teacher["id"] or _find(src, "teacher_id")
    tdir = Path(str(teacher["id"])) if teacher["id"] else None
    if not teacher["sha256"] and tdir and (tdir / "model.safetensors").is_file():
        teacher["sha256"] = sha256_file(tdir / "model.safetensors")  # a teacher given as a directory
    for qm in quant:  # metrics keyed by precision; fp32 comes from them too (same held-out split)
        for p, v in (qm.get("metrics") or {}).items():
            if isinstance(v, dict):
                metrics.setdefault(p, v)
    if "fp32" not in metrics:
        m = _find(report, "val.student.overall", "metrics.student", "student.metrics", "metrics")
        if isinstance(m, dict) and ("image_auc" in m or "pixel_f1" in m):
            metrics["fp32"] = m
    return cal, teacher, metrics


def _model_id(model_dir: Path, cfg_json: dict[str, Any]) -> str:
    weights = model_dir / "model.safetensors"
    digest = sha256_file(weights)[:12] if weights.is_file() else "unknown"
    return f"{cfg_json.get('preset') or cfg_json.get('family') or model_dir.name}-{digest}"


def _steps(total: int):
    """A step progress bar on stderr (quiet where tqdm is absent or stderr is not a terminal)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None:
        class _Null:
            def set_description(self, *_): ...
            def update(self, *_): ...
            def close(self): ...
        return _Null()
    return tqdm(total=total, file=sys.stderr, unit="step", leave=False, disable=None)


def write_package(model, cfg: Any, out: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                  quantized: Sequence[str | os.PathLike] = (), opset: int = 17, tile: int | None = None,
                  data: str | os.PathLike | None = None, atol: float = 1e-3, rtol: float = 1e-3, n_random: int = 4,
                  seed: int = 0, simplify: bool = True, model_id: str | None = None, force: bool = False,
                  overlap: int | None = None, pixels_graph: bool = False, dct_layout: str = DCT_NHWC) -> Package:
    """Export `model` (the FP32 student) and the quantized variants into a verified package at `out`.

    `pixels_graph`: also write PIXELS_FILE, the FP32 graph with the input preparation and the DCT
    stream inside (export.pixels_graph), taking uint8 tiles and the table: for GPUs and TensorRT.

    `dct_layout`: DCT_NHWC (default) rewrites every file to take the stream as uint8 [N, T/8, T/8, F]
    (export.stream_layout, checked bit-identical); DCT_NCHW keeps the export's float32 [N, F, T/8, T/8].

    `overlap`: the runtime's tile overlap (None: what the thresholds were calibrated at, else
    min(64, tile // 4)). It must match the thresholds' own, since the threshold is fitted on
    max-aggregated tile logits."""
    from ..runtime.backends.onnxruntime import input_format
    from ..runtime.tiling import extra_inputs
    from ..student.inputs import dct_spec
    from .golden import as_jpeg, golden_input, ort_session, real_tiles, run_onnx, run_tiles, write_golden
    from .onnx_export import check_onnx, export_onnx, io_signature, pin_io_shapes, simplify_onnx, validate_onnx
    from .stream_layout import rewrite_file

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ArtifactError(f"{out}: exists and is not empty (pass --force to replace it)")
    tile = int(tile or _cfg(cfg, "tile"))
    mean, std = [float(v) for v in _cfg(cfg, "mean", MEAN)], [float(v) for v in _cfg(cfg, "std", STD)]
    if not (np.allclose(mean, MEAN) and np.allclose(std, STD)):
        # the runtime normalizes with runtime.tiling.normalize (ImageNet statistics) and nothing else
        raise ArtifactError(f"student mean/std {mean}/{std} differ from the runtime's ImageNet normalization")
    model_dir = Path(model_dir) if model_dir else None
    th_path = model_dir / "thresholds.json" if model_dir else None
    thresholds = read_json(th_path) if th_path and th_path.is_file() else dict(DEFAULT_THRESHOLDS)
    overlap = _overlap(overlap, tile, thresholds, th_path)
    qinfo = [_read_quantized(q) for q in quantized]  # fail on a bad quantize dir before the slow work
    for p, _, qm in qinfo:
        # manifests from before the overlap was recorded were scored at 64, the old fixed default
        q_ov = _find(qm, "gate.overlap") if "overlap" in (qm.get("gate") or {}) else LEGACY_OVERLAP
        if _find(qm, "gate.n_images") and q_ov is not None and int(q_ov) != overlap:
            log.warning("the %s model's accuracy gate scored images at overlap %s, the package uses %s: its "
                        "deltas describe another tiling (re-run defaker quantize --overlap %s)", p, q_ov, overlap, overlap)
    weights = model_dir / "model.safetensors" if model_dir else None
    if weights and weights.is_file():
        want = sha256_file(weights)
        for (p, src, qm), q in zip(qinfo, quantized):
            got = _find(qm, "source_model.sha256")
            if got and got != want:
                raise ArtifactError(f"{q}: this {p} model was quantized from another student (source sha256 "
                                    f"{got[:12]}..., {weights} is {want[:12]}...); re-run defaker quantize on it")
    dup = sorted({p for p, _, _ in qinfo if [x[0] for x in qinfo].count(p) > 1})
    if dup:
        raise ArtifactError(f"more than one quantized dir holds precision {', '.join(dup)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    publish_mode(tmp, directory=True)  # mkdtemp's 0700 would survive the rename: nobody else could read the package
    bar = _steps(4 + len(quantized) + (1 if simplify else 0))
    try:
        validation: dict[str, Any] = {}
        fp32 = tmp / ONNX_FILES["fp32"]
        bar.set_description("export fp32 onnx")
        export_onnx(model, tile, fp32, opset=opset)
        check_onnx(fp32)
        bar.update()
        bar.set_description("validate vs torch")
        rng = np.random.default_rng(seed)
        real_u8 = real_tiles(tile, data)
        inputs = {"random": rng.standard_normal((n_random, 3, tile, tile)).astype(np.float32),
                  "real": normalize(real_u8)}
        dct = dct_spec(model)
        real_q = None
        if dct is not None:
            # the stream's inputs: random integers and tables (one in four without a table), and real
            # tiles saved as JPEG with their tables
            q = rng.integers(1, 100, (n_random, 64)).astype(np.float32)
            q[::4] = 0
            inputs["random"] = {"image": inputs["random"], "qtable": q,
                                "dct": rng.integers(0, dct[1] + 1, (n_random, dct[0], tile // 8, tile // 8)).astype(np.float32)}
            real_u8, real_q = as_jpeg(real_u8)
            inputs["real"] = {"image": normalize(real_u8), **extra_inputs(real_u8, real_q, dct)}
        validation["export"] = validate_onnx(model, fp32, inputs, atol, rtol).to_json()
        bar.update()
        if simplify:
            bar.set_description("onnxslim + revalidate")
            simplify_onnx(fp32)
            check_onnx(fp32)
            validation["simplified"] = validate_onnx(model, fp32, inputs, atol, rtol).to_json()
            bar.update()
        sig = io_signature(fp32)
        files = {"fp32": ONNX_FILES["fp32"]}
        input_formats: dict[str, str] = {}
        gates: dict[str, dict[str, Any]] = {}
        quant_manifests = []
        ref = run_onnx(fp32, inputs["real"])
        for p, src, qm in qinfo:
            bar.set_description(f"add {p}")
            dst = tmp / ONNX_FILES[p]
            shutil.copyfile(src, dst)
            pin_io_shapes(dst, tile)  # same declared I/O as the FP32 file (a ViT export can leave dims symbolic)
            check_onnx(dst)
            qsig = io_signature(dst)
            qsess = ort_session(dst)
            qfmt = input_format(qsess)
            want = {**sig, INPUT_NAME: [-1, *input_shape(qfmt, tile)]}  # a raw-pixel file has its own input
            if qsig != want:
                raise ArtifactError(f"{src}: inputs/outputs {qsig} do not match the FP32 export {want} (names "
                                    f"{INPUT_NAME}, {', '.join(OUTPUT_NAMES)}, tile {tile}, dynamic batch (-1) required)")
            input_formats[p] = qfmt
            got = run_tiles(qsess, real_u8, real_q)  # informative: how far quantization moved the outputs
            validation[f"vs_fp32_{p}"] = {n: {"max_abs": float(np.abs(g - r).max()), "mean_abs": float(np.abs(g - r).mean())}
                                          for n, g, r in zip(OUTPUT_NAMES, got, ref)}
            files[p] = ONNX_FILES[p]
            quant_manifests.append(qm)
            gates[p] = gate_record(qm)
            bar.update()
        pixels_entry = {}
        if pixels_graph:
            if dct is None:
                raise ArtifactError("--pixels-graph: the model has no DCT stream to move into its graph")
            write_pixels_model(fp32, tmp / PIXELS_FILE, dct)
            check_onnx(tmp / PIXELS_FILE)
            validation["pixels_graph"] = pixels_agreement(tmp / PIXELS_FILE, fp32, real_u8, real_q)
            pixels_entry = {"fp32-pixels": PIXELS_FILE}
        if dct is not None and check_layout(dct_layout) == DCT_NHWC:
            # every file takes the stream as uint8 channels-last (export.stream_layout), the CPU INT8
            # file comparing it as uint8. After the pixels graph, which replaces the FP32 file's stream
            bar.set_description("channels-last stream")
            validation["stream_layout"] = {
                p: rewrite_file(tmp / rel, dct, p == "int8-cpu", real_u8, real_q) for p, rel in files.items()}
        bar.set_description("golden outputs")
        g_u8, g_q = golden_input(tile, data), None
        if dct is not None:
            g_u8, g_q = as_jpeg(g_u8)
        write_golden(tmp, {**files, **pixels_entry}, g_u8, g_q)
        bar.update()
        cfg_json = read_json(model_dir / "config.json") if model_dir and (model_dir / "config.json").is_file() else {}
        cal, teacher, metrics = _provenance(model_dir, quant_manifests) if model_dir else ({}, {}, {})
        spec = TileSpec(tile=tile, overlap=overlap)
        manifest = {
            "format": FORMAT, "schema_version": SCHEMA_VERSION,
            "model_id": model_id or (_model_id(model_dir, cfg_json) if model_dir else f"student-{tile}"),
            "created": utc_now(),
            "input": {"name": INPUT_NAME, "shape": [-1, 3, tile, tile], "dtype": "float32", "layout": "NCHW",
                      "color": "RGB", "scale": 1 / 255, "mean": mean, "std": std, "tile": tile,
                      "overlap": spec.overlap, "stride": spec.stride, "grid": spec.grid,
                      **({"extra": extra_spec(dct, tile, dct_layout)} if dct is not None else {})},
            "outputs": [{"name": "fake_logit", "shape": [-1]}, {"name": "mask_logits", "shape": [-1, 1, tile // 4, tile // 4]}],
            "files": [file_entry(tmp, rel, p, "onnx", role_of(p, gates.get(p)),
                                 **({"gate": gates[p]} if p in gates else {}),
                                 **_input_override(input_formats.get(p), tile)) for p, rel in files.items()]
                     + [file_entry(tmp, PIXELS_FILE, "fp32", "onnx", PIXELS_ROLE, **_input_override(PIXELS, tile))
                        for _ in pixels_entry],
            "thresholds": thresholds, "calibration": cal, "teacher": teacher, "metrics": metrics,
            "tools": tool_versions(),
            "golden": {"file": GOLDEN, "sha256": sha256_file(tmp / GOLDEN),
                       "atol": {p: DEFAULT_ATOL[p] for p in files}},
            "source": {"model_dir": str(model_dir) if model_dir else None, "quantized": [str(q) for q in quantized],
                       "data": str(data) if data else None},
            "validation": validation,
        }
        # a student promoted by the training program carries the held-out comparison that promoted it
        # (distill.promotion); the package states it, so a device maker sees why these weights ship
        if model_dir and (model_dir / "promotion.json").is_file():
            manifest["promotion"] = read_json(model_dir / "promotion.json")
        write_json(tmp / MANIFEST, manifest)
        bar.set_description("verify package")
        rep = verify_package(tmp)
        bar.update()
        if not rep.ok:
            raise ArtifactError("the package just written fails verification: " + "; ".join(map(str, rep.problems)))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return Package(out, manifest, validation)


# thresholds.json and quantize manifests written before they recorded their overlap were all
# scored at 64: ThresholdConfig and the gate had it fixed, whatever the tile
LEGACY_OVERLAP = 64


def extra_spec(dct: tuple[int, int], tile: int, layout: str = DCT_NHWC) -> dict[str, Any]:
    """The manifest's description of the compression-history inputs (runtime.dct says how to make them)."""
    return {"dct": {"shape": [-1, *dct_shape(1, tile, dct, layout)[1:]], "dtype": np.dtype(dct_dtype(layout)).name,
                    "layout": "NHWC" if check_layout(layout) == DCT_NHWC else "NCHW",
                    "freqs": dct[0], "clip": dct[1],
                    "what": "min(|round(DCT(Y - 128) / q)|, clip) per 8x8 block of the tile's luma (BT.601), "
                            "for the first `freqs` zigzag AC coefficients"},
            "qtable": {"shape": [-1, 64], "dtype": "float32",
                       "what": "the file's luma quantization table, natural order; all zeros when there is none "
                               "(not a JPEG, or a tile off the 8x8 grid)"}}


def _overlap(asked: int | None, tile: int, thresholds: dict[str, Any], th_path: Path | None) -> int:
    """The package's tile overlap; an ArtifactError when calibrated thresholds were fitted at another."""
    from ..runtime.tiling import check_overlap, default_overlap

    rule = thresholds.get("band_rule") if isinstance(thresholds, dict) else None
    calibrated = th_path is not None and th_path.is_file()
    fitted = (rule or {}).get("overlap") if calibrated else None
    legacy = calibrated and fitted is None
    if asked is not None:
        try:
            overlap = check_overlap(int(asked), tile)
        except ValueError as e:
            raise ArtifactError(str(e)) from None
    else:
        overlap = int(fitted) if fitted is not None else default_overlap(tile)
    want = LEGACY_OVERLAP if legacy else fitted
    if want is not None and int(want) != overlap and (asked is not None or not legacy):
        cmd = (f"defaker calibrate thresholds --model {th_path.parent} --data {(rule or {}).get('data') or 'M'} "
               f"--overlap {overlap}" + (f" --compare {rule['compare']}" if (rule or {}).get("compare") else ""))
        raise ArtifactError(f"{th_path}: the thresholds were calibrated at tile overlap {want}"
                            f"{' (recorded before the overlap was)' if legacy else ''}, the package would use {overlap}: "
                            f"the threshold and band would not hold. Omit --overlap to use {want}, or recalibrate "
                            f"first (into a copy of the student dir, to keep these): {cmd}")
    if legacy and want != overlap:
        log.warning("%s predates recorded overlaps and was scored at %d; the package uses %d (the default for %d px "
                    "tiles), so its threshold was fitted on another tiling", th_path, LEGACY_OVERLAP, overlap, tile)
    return overlap


def gate_record(qm: dict[str, Any]) -> dict[str, Any]:
    """A quantized file's accuracy gate as its manifest entry records it (from the quantize manifest).

    passed: true (within budget), false (failed; only written because of --force), null (not
    scored: no held-out data, or the metric undefined there)."""
    g = qm.get("gate") if isinstance(qm.get("gate"), dict) else {}
    passed = g.get("passed")
    return {"passed": passed, "forced": bool(g.get("forced")) or passed is False,
            "deltas": qm.get("deltas"), "budget": g.get("budget"), "n_images": g.get("n_images")}


def role_of(precision: str, gate: dict[str, Any] | None) -> str:
    """Only a file that passed its gate ships as "accelerated"; a forced one is "forced" (the runtime
    loads it only when asked for by name), an unscored one "ungated"."""
    if precision == "fp32":
        return "fallback"
    if gate and gate.get("passed") is True:
        return "accelerated"
    return "forced" if gate and gate.get("forced") else "ungated"


def _input_override(fmt: str | None, tile: int) -> dict[str, Any]:
    """A file entry's own input, for a file that does not take the package's (the raw-pixel CPU INT8 model)."""
    if not fmt or fmt == NORMALIZED:
        return {}
    if fmt == PIXELS:
        return {"input": {"format": fmt, "shape": [-1, tile, tile, 3], "dtype": "uint8", "layout": "NHWC",
                          "extra_inputs": [{"name": "qtable", "shape": [-1, 64], "dtype": "float32"}]}}
    return {"input": {"format": fmt, "shape": [-1, *input_shape(fmt, tile)], "dtype": np.dtype(input_dtype(fmt)).name,
                      "layout": "NHWC", "pad_fill": [int(v) for v in RAW_FILL]}}


def export_package(cfg: ExportConfig) -> Package:
    """The stage's entry: load the student from `cfg.model` and write the package."""
    import torch

    torch.manual_seed(cfg.seed)
    model, scfg = load_student_dir(cfg.model)
    return write_package(model, scfg, cfg.out, model_dir=cfg.model, quantized=cfg.quantized, opset=cfg.opset,
                         tile=cfg.tile, data=cfg.data, atol=cfg.atol, rtol=cfg.rtol, n_random=cfg.n_random,
                         seed=cfg.seed, simplify=cfg.simplify, model_id=cfg.model_id, force=cfg.force,
                         overlap=cfg.overlap, pixels_graph=cfg.pixels_graph,
                         dct_layout=cfg.dct_layout)


def _check_onnx_io(package: Path, m: dict[str, Any]) -> tuple[list[Problem], dict[str, Any]]:
    from ..runtime.backends.onnxruntime import input_format
    from .golden import ort_session

    want = {m["input"].get("name"): m["input"].get("shape"),
            **{o.get("name"): o.get("shape") for o in m["outputs"] if isinstance(o, dict)}}
    extra = m["input"].get("extra")
    if isinstance(extra, dict):
        want.update({k: v.get("shape") for k, v in extra.items() if isinstance(v, dict)})
    probs, sessions = [], {}
    for f in onnx_files(m):
        rel = f["path"]
        if not (package / rel).is_file():
            continue  # reported by check_files
        try:
            sess = ort_session(package / rel)
        except Exception as e:  # corrupt protobuf, bad graph: ORT's own exception types
            probs.append(Problem(rel, f"does not load in onnxruntime ({type(e).__name__}: {str(e)[:200]})"))
            continue
        sessions[rel] = sess
        got = {t.name: [d if isinstance(d, int) else -1 for d in t.shape]
               for t in (*sess.get_inputs(), *sess.get_outputs())}
        own = f.get("input") if isinstance(f.get("input"), dict) else {}
        exp = {**want, m["input"].get("name"): own["shape"]} if own.get("shape") else want
        if isinstance(own.get("extra_inputs"), list):  # a file with its own further inputs (the pixels graph)
            exp = {k: v for k, v in exp.items() if k not in (extra or {})}
            exp.update({e.get("name"): e.get("shape") for e in own["extra_inputs"] if isinstance(e, dict)})
        if got != exp:
            probs.append(Problem(rel, f"inputs/outputs {got} do not match the manifest {exp}"))
        try:
            fmt = input_format(sess)
        except ValueError as e:
            probs.append(Problem(rel, str(e)))
            continue
        said = own.get("format") or NORMALIZED
        if fmt != said:
            probs.append(Problem(rel, f"takes input format {fmt}, the manifest says {said}"))
    return probs, sessions


def verify_package(path: str | os.PathLike, golden: bool = True, trusted_key: Any = None) -> VerifyReport:
    """Check a package: schema, every file's sha256, ONNX I/O against the manifest, golden outputs, thresholds, engines.
    With `trusted_key` (runtime.signing), also its signature: every file as that key's holder signed it."""
    from ..runtime.signing import SIGNATURE, signature_problems
    from .golden import check_golden

    path = Path(path)
    rep = VerifyReport(str(path))
    if trusted_key is not None:
        signed, sig_probs = signature_problems(path, trusted_key)
        rep.problems += [Problem(f, why) for f, why in sig_probs]
        rep.checked.append(SIGNATURE)
        rep.signature = f"verified by {signed.keyid[:16]}" if signed and not sig_probs else "failed"
    elif (path / SIGNATURE).is_file():
        rep.signature = "present, not checked (no trusted key)"
    try:
        m = read_manifest(path)
    except DefakerError as e:
        rep.problems.append(Problem(MANIFEST, str(e)))
        return rep
    rep.checked.append(MANIFEST)
    rep.problems += check_schema(m)
    structural = (any(p.file == MANIFEST and "missing keys" in p.message for p in rep.problems)
                  or not isinstance(m.get("files"), list) or not isinstance(m.get("input"), dict)
                  or not isinstance(m.get("outputs"), list) or not isinstance(m.get("golden"), dict))
    if structural:
        return rep  # the file checks need these parts; what is wrong with them is already reported
    rep.checked += [f["path"] for f in m["files"] if isinstance(f, dict) and "path" in f]
    rep.problems += check_files(path, m)
    io_probs, sessions = _check_onnx_io(path, m)
    rep.problems += io_probs
    if golden:
        rep.checked.append(m["golden"].get("file", GOLDEN))
        unloadable = {p.file for p in io_probs if "does not load" in p.message}
        rep.problems += check_golden(path, m, sessions, skip=unloadable)
    return rep
