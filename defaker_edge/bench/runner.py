"""`run_bench`: latency x accuracy x robustness for every variant of a package, in one run.

Every ratio the report states is computed from rows measured in this one run on this one machine.
A variant that cannot run here gets a row with status and reason, never a number.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..artifacts import to_jsonable, tool_versions, utc_now, write_json
from ..errors import DatasetError, DefakerError, ImageError
from .adapter import PROVIDERS, make_predictor
from .config import RANDOM_PRESETS, BenchConfig, BenchReport
from .latency import progress, run_job
from .machine import load_average, machine_info
from .package import PackageInfo, read_package
from .report import SCHEMA_VERSION, FORMAT, speedups_and_targets, write_markdown

log = logging.getLogger(__name__)


def resolve_backends(requested: list[str] | None, providers: list[str]) -> tuple[list[str], dict[str, str]]:
    """(backends to run, {backend: why not} for requested ones this machine lacks)."""
    ort_have = [b for b, p in PROVIDERS.items() if p in providers]
    missing: dict[str, str] = {}
    if requested is None:
        return ort_have, missing
    run = []
    for b in requested:
        if b in PROVIDERS:
            if b in ort_have:
                run.append(b)
            else:
                missing[b] = f"onnxruntime here has no {PROVIDERS[b]} (providers: {', '.join(providers) or 'none'})"
        elif b == "tensorrt":
            missing[b] = tensorrt_reason()
        # "torch" is the teacher's backend; it needs no row of its own
    return run, missing


def tensorrt_reason() -> str:
    """Why a TensorRT engine row has no number (the bench times ONNX files; engines are per-GPU)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed on this machine"
    return ("TensorRT engines are not timed by this bench yet: time them on the device with "
            "`Detector.load(package, backend='tensorrt')`")


def cpu_int8_variant(pkg: PackageInfo) -> str | None:
    """The INT8 file a CPU runs: the ORT-tuned one if the package has it (what the runtime picks)."""
    for p in ("int8-cpu", "int8"):
        if pkg.variant(p):
            return p
    return None


def _latency_rows(cfg: BenchConfig, pkg: PackageInfo, backends: list[str], missing: dict[str, str]) -> list[dict]:
    variants = [v for v in pkg.variants if cfg.precisions is None or v.precision in cfg.precisions]
    rows, jobs = [], []
    for v in variants:
        base = {"variant": v.precision, "kind": "student", "precision": v.precision,
                "file": str(v.path.relative_to(pkg.root)), "model_bytes": v.bytes, "model_bytes_source": "file",
                "image_size": [cfg.image_size, cfg.image_size], "runs": cfg.runs, "warmup": cfg.warmup}
        if v.format != "onnx":
            rows.append({**base, "backend": v.format, "status": "skipped",
                         "reason": tensorrt_reason() if v.format == "tensorrt" else f"{v.format} files are not timed"})
            continue
        for b in backends:
            jobs.append((len(rows), {"kind": "onnx", "path": str(v.path), "provider": PROVIDERS[b],
                                     "package": str(pkg.root), "precision": v.precision,
                                     "use_detector": cfg.prefer_detector,
                                     "threads": cfg.threads, "tile": pkg.tile, "overlap": pkg.overlap,
                                     "temperature": pkg.temperature, "image_size": cfg.image_size,
                                     "runs": cfg.runs, "warmup": cfg.warmup, "batches": list(cfg.batches),
                                     "seed": cfg.seed}))
            rows.append({**base, "backend": b})
        for b, why in missing.items():
            if b in PROVIDERS:
                rows.append({**base, "backend": b, "status": "skipped", "reason": why})
    for i, job in progress(jobs, "latency", unit="variant"):
        res = run_job(job, cfg.worker_timeout_s)
        rows[i].update(res)
    for r in rows:
        r.setdefault("reason", None)
    return rows


def _paired(cfg: BenchConfig, pkg: PackageInfo, backends: list[str]) -> dict | None:
    """FP32 and the CPU INT8 file timed in turns in one process (latency.measure_paired), the
    measurement the INT8-vs-FP32 targets use; None when the package or machine lacks one of them."""
    int8 = cpu_int8_variant(pkg)
    wanted = ["fp32", int8]
    if (int8 is None or "ort-cpu" not in backends or not pkg.variant("fp32")
            or (cfg.precisions is not None and not set(wanted) <= set(cfg.precisions))):
        return None
    log.info("timing fp32 and %s in turns (%d rounds per tile and per image)", int8, cfg.runs)
    res = run_job({"kind": "paired", "package": str(pkg.root), "precisions": wanted,
                   "provider": PROVIDERS["ort-cpu"], "threads": cfg.threads, "tile": pkg.tile,
                   "image_size": cfg.image_size, "runs": cfg.runs, "warmup": cfg.warmup, "seed": cfg.seed},
                  cfg.worker_timeout_s)
    res.setdefault("reason", None)
    return {"backend": "ort-cpu", "precisions": wanted, **res}


def _teacher_latency(cfg: BenchConfig, spec: str) -> dict:
    row = {"variant": f"teacher:{Path(spec).name if Path(spec).is_dir() else spec}", "kind": "teacher",
           "precision": cfg.teacher_dtype, "backend": "torch", "file": spec if Path(spec).is_dir() else None,
           "image_size": [cfg.image_size, cfg.image_size], "runs": cfg.teacher_runs, "warmup": cfg.teacher_warmup}
    log.info("timing the teacher %s (%d run(s) + %d warm-up); at real size on a CPU this takes minutes per run",
             spec, cfg.teacher_runs, cfg.teacher_warmup)
    res = run_job({"kind": "teacher", "spec": spec, "device": cfg.teacher_device, "dtype": cfg.teacher_dtype,
                   "threads": cfg.threads, "runs": cfg.teacher_runs, "warmup": cfg.teacher_warmup,
                   "image_size": cfg.image_size, "seed": cfg.seed}, cfg.teacher_timeout_s, stream_stderr=True)
    row.update(res)
    row.setdefault("reason", None)
    return row


def _accuracy_rows(cfg: BenchConfig, pkg: PackageInfo, samples, backend: str | None):
    """Accuracy per ONNX variant on one backend; returns (rows, {variant: EvalResult})."""
    from .accuracy import agreement, evaluate, headline

    rows, results, predictors = [], {}, {}
    variants = [v for v in pkg.onnx_variants() if cfg.precisions is None or v.precision in cfg.precisions]
    for v in variants:
        row = {"variant": v.precision, "kind": "student", "backend": backend, "threshold": pkg.threshold}
        if samples is None or backend is None:
            row.update(status="skipped", reason="no --data given" if samples is None else "no ONNX Runtime backend")
            rows.append(row)
            continue
        t0 = time.perf_counter()
        try:
            pred, note = make_predictor(pkg.root, v, provider=PROVIDERS[backend], tile=pkg.tile,
                                        overlap=pkg.overlap, temperature=pkg.temperature, threads=cfg.threads,
                                        prefer_detector=cfg.prefer_detector)
            res = evaluate(pred, samples, pkg.threshold, desc=f"accuracy {v.precision}",
                           pixel_threshold=pkg.pixel_threshold)
        except (DatasetError, ImageError):  # the user's data: stop and say which file
            raise
        except Exception as e:
            row.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            rows.append(row)
            continue
        results[v.precision] = res
        predictors[v.precision] = pred
        row.update(status="ok", reason=None, via=pred.kind, note=note, n_fallback=res.n_fallback, band=res.band,
                   seconds=time.perf_counter() - t0, headline=headline(res.summary), metrics=res.summary)
        rows.append(row)
    ref = results.get("fp32")
    for row in rows:
        if row.get("status") == "ok":
            row["agreement"] = {"vs_fp32": agreement(results[row["variant"]], ref) if ref else None}
    return rows, results, predictors


def _teacher_accuracy(cfg: BenchConfig, spec: str, samples, student_results: dict, rows: list[dict]) -> dict:
    from .accuracy import agreement, evaluate, headline
    from .teacher_adapter import TeacherPredictor

    name = f"teacher:{Path(spec).name if Path(spec).is_dir() else spec}"
    row = {"variant": name, "kind": "teacher", "backend": "torch", "threshold": 0.5}
    if samples is None:
        return {**row, "status": "skipped", "reason": "no --data given"}
    try:
        tp = TeacherPredictor(spec, device=cfg.teacher_device, dtype=cfg.teacher_dtype)
        res = evaluate(tp, samples, 0.5, desc=f"accuracy {name}")
    except (DatasetError, ImageError):
        raise
    except Exception as e:
        return {**row, "status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
    for r in rows:
        if r.get("status") == "ok" and r["variant"] in student_results:
            r.setdefault("agreement", {})["vs_teacher"] = agreement(student_results[r["variant"]], res)
    return {**row, "status": "ok", "reason": None, "via": "teacher", "headline": headline(res.summary),
            "metrics": res.summary}


def run_bench(cfg: BenchConfig) -> BenchReport:
    """Measure, then write OUT/report.json, report.md, pareto.png (and robustness.png)."""
    from ..data.dataset import load_dataset

    cfg.validate()
    t_start, started = time.perf_counter(), utc_now()
    pkg = read_package(cfg.package)
    machine = machine_info()
    samples = None
    if cfg.data is not None:
        samples = load_dataset(cfg.data, split=cfg.split)
        if cfg.limit:
            samples = samples[:cfg.limit]
    backends, missing = resolve_backends(cfg.backends, machine["onnxruntime_providers"])
    if not backends:
        raise DefakerError("no ONNX Runtime backend to run on: " + "; ".join(missing.values()) if missing
                           else "onnxruntime has no usable execution provider")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    latency = _latency_rows(cfg, pkg, backends, missing)
    paired = _paired(cfg, pkg, backends)
    teacher_specs = list(dict.fromkeys(s for s in (cfg.teacher_preset, cfg.teacher) if s))  # once each
    latency = [_teacher_latency(cfg, spec) for spec in teacher_specs] + latency

    acc_backend = backends[0]
    accuracy, results, predictors = _accuracy_rows(cfg, pkg, samples, acc_backend)
    if cfg.teacher and cfg.teacher not in RANDOM_PRESETS:
        accuracy.insert(0, _teacher_accuracy(cfg, cfg.teacher, samples, results, accuracy))
    for spec in teacher_specs:
        if spec in RANDOM_PRESETS:
            accuracy.insert(0, {"variant": f"teacher:{spec}", "kind": "teacher", "backend": "torch",
                                "status": "n/a", "reason": f"random weights ({spec}): timed only; accuracy "
                                "is not applicable"})

    robustness = None
    if cfg.robustness:
        robustness = _robustness(cfg, pkg, samples, predictors, acc_backend)

    report = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "created": started, "finished": utc_now(),
        "machine": machine, "tools": tool_versions(["opencv-python-headless", "matplotlib"]),
        "config": cfg.to_json(), "package": pkg.summary(),
        "data": _data_summary(cfg, samples),
        "latency": latency, "paired": paired, "accuracy": accuracy, "accuracy_backend": acc_backend,
        "robustness": robustness,
    }
    report.update(speedups_and_targets(report, cpu_int8_variant(pkg)))
    report["machine"]["load_avg_end"] = load_average()
    report["seconds"] = time.perf_counter() - t_start
    files = {"report.json": out / "report.json", "report.md": out / "report.md"}
    if cfg.compare:
        from .compare import compare_reports, load_report

        report["compare"] = compare_reports(report, load_report(cfg.compare), str(cfg.compare))
    report = to_jsonable(report)
    write_json(files["report.json"], report)
    write_markdown(report, files["report.md"])
    if cfg.plots:
        try:
            from .plots import pareto_plot, robustness_plot

            files["pareto.png"] = pareto_plot(report, out / "pareto.png")
            if robustness:
                files["robustness.png"] = robustness_plot(report, out / "robustness.png")
        except ImportError as e:  # a runtime-only install (a device) has no matplotlib: the JSON is what counts
            log.warning("plots skipped: %s (pip install matplotlib)", e)
    return BenchReport(out=out, data=report, files={k: v for k, v in files.items() if v})


def _data_summary(cfg: BenchConfig, samples) -> dict | None:
    if samples is None:
        return None
    from collections import Counter

    from ..artifacts import sha256_file

    data = Path(cfg.data)
    # the manifest's sha256: two reports on different data sets are told apart (bench --compare)
    sha = sha256_file(data) if data.is_file() else None
    return {"path": str(cfg.data), "sha256": sha, "split": cfg.split, "limit": cfg.limit, "n": len(samples),
            "n_fake": sum(s.label for s in samples), "n_with_mask": sum(1 for s in samples if s.label and s.mask),
            "domains": dict(Counter(s.domain for s in samples))}


def _robustness(cfg: BenchConfig, pkg: PackageInfo, samples, predictors: dict, backend: str) -> dict:
    from .accuracy import evaluate, headline
    from .robustness import parse_levels, run_robustness

    levels = cfg.robustness_levels or parse_levels(None)
    if samples is None:
        return {"status": "skipped", "reason": "no --data given", "levels": levels, "rows": []}
    if cfg.robustness_limit:
        samples = samples[:cfg.robustness_limit]
    wanted = cfg.robustness_variants or [p for p in ("fp32", cpu_int8_variant(pkg)) if p]
    rows, clean, skipped = [], [], {}
    for v in wanted:
        if v not in predictors:
            skipped[v] = "variant not in the package or its accuracy run failed"
            continue
        # the unperturbed baseline on these same images: the accuracy run's headline is on all of
        # --data, and a curve on a subset compared with it mixes two samples' noise
        res = evaluate(predictors[v], samples, pkg.threshold, desc=f"{v} clean", pixel_threshold=pkg.pixel_threshold)
        clean.append({"variant": v, "backend": backend, **headline(res.summary)})
        rows += run_robustness(predictors[v], samples, pkg.threshold, levels, variant=v, backend=backend,
                               seed=cfg.seed)
    return {"status": "ok", "levels": levels, "n_images": len(samples), "variants": [v for v in wanted if v in predictors],
            "skipped": skipped, "backend": backend, "clean": clean, "rows": rows}
