"""`quantize(model, calib, cfg)`: PTQ to Q/DQ ONNX behind the accuracy gate.

1. FP32 ONNX from the student (the reference the gate compares against; shipped alongside).
2. The quantized ONNX for the precision (modelopt_ptq / ort_static), with --exclude layers in FP32.
3. Both files are scored with ONNX Runtime (CPU) on the held-out split, full images through the
   runtime's tiling and aggregation; deltas = FP32 - quantized.
4. Over budget: with --auto-exclude, keep the fewest most-sensitive layers in FP32 that pass;
   else refuse (QuantGateError, nothing written) unless --force.
Everything is built in a temporary folder next to OUT and renamed into place only at the end, so
a refused or interrupted run never leaves a partial OUT.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import read_json, sha256_file, tool_versions, utc_now, write_json
from ..errors import ArtifactError, DefakerError
from .config import MANIFEST_FORMAT, QuantConfig, QuantResult
from .gate import Budget, deltas_of, failures, gate_error

log = logging.getLogger(__name__)

_LAYER_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "Linear")


def _load_model(model: Any) -> tuple[Any, dict]:
    """(nn.Module, provenance) from a student dir or an nn.Module (tests, notebooks)."""
    if isinstance(model, (str, os.PathLike)):
        from ..student import load_student

        p = Path(model)
        m, scfg = load_student(p)
        return m, {"path": str(p.resolve()), "sha256": sha256_file(p / "model.safetensors"),
                   "tile": scfg.tile, "family": scfg.family}
    return model.eval(), {"path": None, "sha256": None, "tile": None, "family": type(model).__name__}


def _plain_layers(model) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__ in _LAYER_TYPES]


def _raw_input_record(onnx_path: Path) -> dict[str, Any]:
    """The manifest's input_format (and, on raw pixels, the front conv's weight error) from the file."""
    import onnx

    from ..runtime.tiling import model_format
    from .raw_input import WEIGHT_ERROR_KEY

    m = onnx.load(str(onnx_path), load_external_data=False)
    out: dict[str, Any] = {"input_format": model_format(m)}
    err = next((p.value for p in m.metadata_props if p.key == WEIGHT_ERROR_KEY), None)
    if err is not None:
        out["front_weight_error"] = float(err)
    return out


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        man = out / "manifest.json"
        if not man.is_file() or read_json(man).get("format") != MANIFEST_FORMAT:
            raise ArtifactError(f"{out}: exists and is not a quantized model; choose another --out")


class _Builder:
    """Builds the quantized ONNX for a set of FP32-kept layers, sharing one calibration."""

    def __init__(self, model, calib: np.ndarray, cfg: QuantConfig, tile: int, work: Path, fp32_onnx: Path,
                 calib_u8: np.ndarray | None = None, raw_input: bool = False,
                 extra: dict[str, np.ndarray] | None = None):
        self.model, self.calib, self.cfg, self.tile, self.work, self.fp32_onnx = model, calib, cfg, tile, work, fp32_onnx
        self.calib_u8, self.raw_input = calib_u8, raw_input
        self.extra = extra or {}  # the compression-history stream's inputs, aligned with calib
        self._qmodel = None
        self.cpu_fp32_nodes: list[str] = []

    def batches(self, limit: int | None = None) -> list:
        """Calibration batches: arrays, or (image, dct, qtable) tuples for a compression-history model."""
        x = self.calib if limit is None else self.calib[:limit]
        b = self.cfg.batch
        if not self.extra:
            return [x[a:a + b] for a in range(0, len(x), b)]
        return [(x[a:a + b], *(v[a:a + b] for v in self.extra.values())) for a in range(0, len(x), b)]

    def qmodel(self, precision: str | None = None):
        """The calibrated fake-quant torch model (INT8 config for int8/int8-cpu, FP8 for fp8)."""
        from .modelopt_ptq import calibrate

        if self._qmodel is None:
            p = "fp8" if (precision or self.cfg.precision) == "fp8" else "int8"
            self._qmodel = calibrate(self.model, self.batches(), p)
            if self.cfg.post_calibrate is not None and self.cfg.precision == "int8":
                self.cfg.post_calibrate(self._qmodel)
        return self._qmodel

    def layers(self) -> list[str]:
        from .modelopt_ptq import quantized_layers

        if self.cfg.precision == "int8" or self._qmodel is not None:
            return quantized_layers(self.qmodel())
        return _plain_layers(self.model)

    def build(self, excluded: list[str], name: str) -> tuple[Path, list[str]]:
        """Write work/name; returns (path, excluded ONNX node names)."""
        from .modelopt_ptq import export_onnx, fp8_onnx, onnx_nodes_for, set_layers_enabled

        path = self.work / name
        nodes = onnx_nodes_for(self.fp32_onnx, excluded) if excluded else []
        if self.cfg.precision == "int8":
            qm = self.qmodel()
            set_layers_enabled(qm, excluded, False)
            try:
                export_onnx(qm, path, self.tile, self.cfg.opset)
            finally:
                set_layers_enabled(qm, excluded, True)
        elif self.cfg.precision == "fp8":
            fp8_onnx(self.fp32_onnx, path, self.calib, nodes, self.extra)
        else:
            from .ort_static import image_readers, output_nodes, quantize_ort_static

            # the ops that produce the outputs stay FP32 on CPUs (output_nodes), and so do those on
            # the normalized image (image_readers); on raw pixels the front end quantizes exactly
            readers = [] if self.raw_input else image_readers(self.fp32_onnx)
            self.cpu_fp32_nodes = readers + output_nodes(self.fp32_onnx)
            quantize_ort_static(self.fp32_onnx, path, self.calib_u8 if self.raw_input else self.calib,
                                sorted(set(nodes) | set(self.cpu_fp32_nodes)), batch=self.cfg.batch,
                                raw_input=self.raw_input, feeds=self.extra)
        return path, nodes


def quantize(model: Any, calib_dir: str | os.PathLike, cfg: QuantConfig) -> QuantResult:
    """Quantize `model` (student dir or nn.Module) with the calibration set; see the module doc."""
    from ..calibration.reader import load_calibration
    from .evaluate import heldout_samples, metrics_of, onnx_runner, predict_images
    from .modelopt_ptq import export_onnx, matching

    cfg.validate()
    if not cfg.out:
        raise DefakerError("quantize needs an output directory (--out)")
    out = Path(cfg.out)
    _prepare_out(out)
    net, source = _load_model(model)
    cs = load_calibration(calib_dir)
    tile = cs.tile
    if source["tile"] and source["tile"] != tile:
        raise DefakerError(f"the calibration tiles are {tile} px but the student was built for {source['tile']}: "
                           f"rebuild the calibration set with --tile {source['tile']}")
    # The set is stored grouped by domain and label; a seeded shuffle makes any prefix (--calib-n,
    # the sensitivity tiles, the timing tiles) a mix of every domain and both labels.
    order = np.random.default_rng(cfg.seed).permutation(len(cs))[:cfg.calib_n or len(cs)]
    from ..runtime.tiling import normalize

    calib = np.concatenate([normalize(cs.tiles[order[a:a + 64]]) for a in range(0, len(order), 64)])
    from ..runtime.tiling import extra_inputs
    from ..student.inputs import dct_spec

    dct = dct_spec(net)
    calib_extra: dict[str, np.ndarray] = {}
    if dct is not None:  # the stream's inputs for the same tiles, from each tile's recorded table
        if cs.qtables is None:
            log.warning("%s was built before tiles recorded their JPEG tables: the DCT stream is "
                        "calibrated as if no tile came from a JPEG (rebuild it with `defaker calibrate build`)",
                        calib_dir)
        parts = [extra_inputs(cs.tiles[order[a:a + 64]], cs.tables()[order[a:a + 64]], dct)
                 for a in range(0, len(order), 64)]
        calib_extra = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    from ..runtime.tiling import check_overlap, default_overlap

    try:
        overlap = default_overlap(tile) if cfg.overlap is None else check_overlap(cfg.overlap, tile)
    except ValueError as e:
        raise DefakerError(str(e)) from None
    data = cfg.data or cs.manifest.get("data")
    samples = None
    if cfg.data or (data and Path(data).exists()):
        samples = heldout_samples(data, cfg.split)  # an explicit --data that is missing is an error
    else:
        log.warning("no held-out data (--data) and the calibration set's source is gone: the accuracy "
                    "gate cannot run; the manifest records passed=null")
    budget = Budget(cfg.budget_auc, cfg.budget_f1)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fp32_onnx = export_onnx(net, work / "model_fp32.onnx", tile, cfg.opset)

        def score(path: Path, desc: str) -> dict:
            preds = predict_images(onnx_runner(path, tile, cfg.threads), samples, tile, overlap=overlap,
                                   batch=cfg.batch, desc=desc)
            return metrics_of(preds)["overall"]

        fp32_m = score(fp32_onnx, "fp32") if samples else {}
        raw = False
        if cfg.precision == "int8-cpu" and cfg.raw_input:
            from .raw_input import unsupported

            why = unsupported(fp32_onnx)
            raw = why is None
            if why:
                log.info("int8-cpu keeps the normalized float input: %s", why)
        builder = _Builder(net, calib, cfg, tile, work, fp32_onnx, calib_u8=cs.tiles[order] if raw else None,
                           raw_input=raw, extra=calib_extra)
        layers = builder.layers()  # walks the calibrated model once
        excluded = matching(layers, cfg.exclude)
        if cfg.exclude and not excluded:
            log.warning("--exclude %s matched no quantized layer", cfg.exclude)
        # layers the model itself marks full-precision (fixed forensic filters that read sub-grey-level
        # residuals of the raw image: quantizing their input would round the signal away)
        # (not on raw pixels: a uint8 pixel quantizes exactly, see quantize.raw_input)
        model_fp = getattr(net, "full_precision_layers", lambda: [])()
        fixed = [] if raw else [n for n in model_fp if n in layers]
        excluded += [n for n in fixed if n not in excluded]
        attempts: list[dict] = []

        def attempt(excl: list[str]) -> tuple[Path, list[str], dict, dict]:
            path, nodes = builder.build(excl, f"try{len(attempts)}.onnx")
            qm = score(path, cfg.precision) if samples else {}
            d = deltas_of(fp32_m, qm) if samples else {"image_auc": None, "pixel_f1": None}
            attempts.append({"excluded": list(excl), "deltas": d, "passed": not failures(d, budget)})
            log.info("%s with %d layer(s) in FP32: dAUC %s, d pixel F1 %s", cfg.precision, len(excl),
                     d["image_auc"], d["pixel_f1"])
            return path, nodes, qm, d

        qpath, nodes, q_m, d = attempt(excluded)
        ranking: list[tuple[str, float]] = []
        if samples and failures(d, budget) and cfg.auto_exclude:
            from .sensitivity import fewest_excluded, rank_layers

            qm_t = builder.qmodel()
            # on raw pixels the front end is exact in INT8; the torch fake-quant model that ranks the
            # layers would quantize its normalized input instead and rank it first for nothing
            skip = set(model_fp) if raw else set()
            cand = [n for n in builder.layers() if n not in excluded and n not in skip]
            ranking = rank_layers(net, qm_t, cand, builder.batches(limit=cfg.sensitivity_tiles))
            best: dict[str, Any] = {}

            def passes(extra: list[str]) -> bool:
                r = attempt(excluded + extra)
                if not failures(r[3], budget):
                    best["r"], best["excl"] = r, excluded + extra
                    return True
                return False

            found = fewest_excluded([n for n, _ in ranking], passes, cfg.max_auto_exclude)
            if found is not None:
                qpath, nodes, q_m, d = best["r"] if best["excl"] == excluded + found else attempt(excluded + found)
                excluded = excluded + found
        passed = None if not samples else not failures(d, budget)
        if passed is False and not cfg.force:
            raise gate_error(cfg.precision, d, budget, len(samples),
                             auto_tried=min(cfg.max_auto_exclude, len(ranking)) if cfg.auto_exclude else None)
        if passed is False:
            log.warning("writing a model that fails the accuracy gate (--force): %s", ", ".join(failures(d, budget)))

        speed = None
        if cfg.precision == "int8-cpu":
            from .ort_static import speed_ratio

            speed = speed_ratio(fp32_onnx, qpath, cs.tiles[order[:cfg.bench_tiles]], threads=cfg.bench_threads,
                                tables=cs.tables()[order[:cfg.bench_tiles]])
            log.info("int8-cpu vs fp32 (ORT CPU, batch 1, %d px): %.2fx (%.1f ms vs %.1f ms)", tile,
                     speed["ratio"], speed["int8_ms"], speed["fp32_ms"])

        final = work / "final"
        final.mkdir()
        shutil.move(str(qpath), final / "model.onnx")
        shutil.move(str(fp32_onnx), final / "model_fp32.onnx")
        manifest = {
            "format": MANIFEST_FORMAT,
            "created": utc_now(),
            "precision": cfg.precision,
            "tile": tile,
            "source_model": source,
            "calibration": {"path": str(Path(calib_dir).resolve()), "sha256": cs.sha256, "n": int(len(calib))},
            "excluded_layers": excluded,
            "excluded_nodes": nodes,
            "cpu_fp32_nodes": builder.cpu_fp32_nodes,
            **_raw_input_record(final / "model.onnx"),
            "sensitivity": [{"layer": n, "score": s} for n, s in ranking],
            "metrics": {"fp32": fp32_m, cfg.precision: q_m} if samples else {},
            "deltas": d,
            "gate": {"budget": budget.to_json(), "passed": passed, "forced": bool(cfg.force and passed is False),
                     "data": str(data) if samples else None, "n_images": len(samples) if samples else 0,
                     "overlap": overlap if samples else None,
                     "attempts": attempts},
            "speed": speed,
            "files": [{"path": f, "sha256": sha256_file(final / f), "precision": p}
                      for f, p in (("model.onnx", cfg.precision), ("model_fp32.onnx", "fp32"))],
            "seed": cfg.seed,
            "tools": tool_versions(),
        }
        write_json(final / "manifest.json", manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(final, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return QuantResult(out=out, onnx=out / "model.onnx", precision=cfg.precision, manifest=manifest,
                       passed=passed, deltas=d, excluded_layers=excluded)
