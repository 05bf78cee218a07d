"""report.json's schema version, the ratios and targets derived from its rows, and report.md.

The schema is documented in bench/README.md ("report.json"). Bump SCHEMA_VERSION on any change
that renames or re-means a key; adding a key does not bump it.
"""

from __future__ import annotations

from pathlib import Path

from .machine import describe

FORMAT = "defaker-bench/1"
SCHEMA_VERSION = 1

# The project's targets (the benchmark issue); checked against this run's own rows.
TARGET_TEACHER_SPEEDUP = 100.0
TARGET_INT8_VS_FP32 = 1.3
TARGET_INT8_IMAGE_MS = 150.0
REAL_SIZE_TEACHER = "defakerone-2b"


def _p50(row: dict | None, key: str = "per_image_ms") -> float | None:
    if not row or row.get("status") != "ok":
        return None
    return (row.get(key) or {}).get("p50")


def _find(rows: list[dict], variant: str, backend: str | None = None) -> dict | None:
    for r in rows:
        if r["variant"] == variant and (backend is None or r.get("backend") == backend):
            return r
    return None


def _ratio(name: str, num: dict | None, den: dict | None, what: str, key: str = "per_image_ms") -> dict:
    a, b = _p50(num, key), _p50(den, key)
    unit = {"per_image_ms": "image (verdict)", "per_image_full_mask_ms": "image with its full-size mask"}.get(
        key, "tile (the model alone, batch 1)")
    out = {"name": name, "what": what, "basis": f"p50 latency per {unit}, both measured in this run",
           "numerator": {"variant": num and num["variant"], "backend": num and num.get("backend"), "p50_ms": a},
           "denominator": {"variant": den and den["variant"], "backend": den and den.get("backend"), "p50_ms": b}}
    out["ratio"] = a / b if a and b else None
    if out["ratio"] is None:
        out["reason"] = "not measured: " + ", ".join(
            f"{r['variant']} on {r.get('backend')}: {r.get('status')} ({r.get('reason')})" if r else "row absent"
            for r in (num, den) if _p50(r, key) is None)
    return out


def _paired_ratios(paired: dict, int8: str) -> list[dict]:
    """Speedup entries from the timed-in-turns measurement (runner._paired)."""
    ref = paired.get("reference", "fp32")
    variants = paired.get("variants") or {}
    v, r = variants.get(int8) or {}, variants.get(ref) or {}
    out = []
    how = {"tile": "per tile (the model alone, batch 1)",
           "tile_batch": f"per tile (the model alone, at the runtime's batch of {paired.get('batch')})",
           "image": "per image through the Detector (verdict)"}
    for what, key in (("tile", "cpu_tile_paired"), ("tile_batch", "cpu_tile_batch_paired"), ("image", "cpu_paired")):
        e = {"name": f"{ref}_vs_{int8}_{key}",
             "what": f"student {ref} / {int8} on ONNX Runtime CPU, {how[what]}, "
                     "both timed in turns in one process: the noise-robust measure",
             "basis": f"median over {paired.get('runs')} rounds of each round's {ref}/{int8} time",
             "numerator": {"variant": ref, "backend": paired.get("backend"),
                           "p50_ms": (r.get(f"per_{what}_ms") or {}).get("p50")},
             "denominator": {"variant": int8, "backend": paired.get("backend"),
                             "p50_ms": (v.get(f"per_{what}_ms") or {}).get("p50")},
             "ratio": v.get(f"ratio_{what}") if paired.get("status") == "ok" else None}
        if e["ratio"] is None:
            e["reason"] = f"not measured: {paired.get('status')} ({paired.get('reason')})"
        out.append(e)
    return out


def speedups_and_targets(report: dict, int8: str | None) -> dict:
    lat = report["latency"]
    cpu = "ort-cpu"
    teachers = [r for r in lat if r["kind"] == "teacher"]
    big = next((r for r in teachers if r["variant"] == f"teacher:{REAL_SIZE_TEACHER}"), None)
    teacher = big or (teachers[0] if teachers else None)
    sp = []
    if teacher is not None:
        for v in [p for p in ("int8", "int8-cpu") if _find(lat, p)]:
            stu = _find(lat, v, cpu) or _find(lat, v)
            sp.append(_ratio(f"teacher_vs_{v}", teacher, stu, f"{teacher['variant']} ({teacher.get('backend')}, "
                             f"{teacher.get('precision')}) per image / student {v}: how many times faster the student is"))
    if int8:
        sp.append(_ratio(f"fp32_vs_{int8}_cpu", _find(lat, "fp32", cpu), _find(lat, int8, cpu),
                         f"student fp32 / {int8} on ONNX Runtime CPU, per image through the Detector (verdict "
                         "and quarter-resolution mask): the INT8 speedup a device sees, diluted by the "
                         "precision-independent tiling and normalization"))
        sp.append(_ratio(f"fp32_vs_{int8}_cpu_full_mask", _find(lat, "fp32", cpu), _find(lat, int8, cpu),
                         f"the same with the full-size mask read as well (its upsampling is precision-independent)",
                         key="per_image_full_mask_ms"))
        # the model's own speedup on the same tiles (what quantization changes; the quantize issue's measure)
        sp.append(_ratio(f"fp32_vs_{int8}_cpu_tile", _find(lat, "fp32", cpu), _find(lat, int8, cpu),
                         f"student fp32 / {int8} on ONNX Runtime CPU, the same tile, model alone", key="per_tile_ms"))
    paired = report.get("paired")
    if int8 and paired:
        sp += _paired_ratios(paired, int8)
    if _find(lat, "fp16"):
        gpu = next((b for b in ("ort-trt", "ort-cuda") if _p50(_find(lat, "fp16", b))), None)
        if gpu:
            sp.append(_ratio("fp32_vs_fp16_gpu", _find(lat, "fp32", gpu), _find(lat, "fp16", gpu),
                             f"student fp32 / fp16 on {gpu}"))
    by = {s["name"]: s for s in sp}
    targets = []
    t_int8 = by.get(f"teacher_vs_{int8}") if int8 else None
    targets.append(_target("student INT8 vs the 2B teacher, per 1024x1024 image", ">=", TARGET_TEACHER_SPEEDUP,
                           t_int8["ratio"] if t_int8 and big else None, "x",
                           None if big else "the defakerone-2b preset was not timed (--teacher-preset defakerone-2b "
                                            "--random-weights)"))
    # the INT8/FP32 targets use the timed-in-turns ratios when they were measured (see
    # latency.measure_paired: the sequential rows' ratio drifts with a shared CPU's speed)
    for label, key in (("the same tiles", "cpu_tile"), ("the same tiles at the runtime's batch", "cpu_tile_batch"),
                       ("per 1024x1024 image end to end (verdict)", "cpu")):
        s = (by.get(f"fp32_vs_{int8}_{key}_paired") or {}) if int8 else {}
        basis = "timed in turns, median of per-round ratios"
        if s.get("ratio") is None:
            why = f"; timed in turns: {s['reason']}" if s.get("reason") else ""
            if key == "cpu_tile_batch":  # no sequential row times a batch
                basis = "measured only when FP32 and the CPU INT8 file are timed in turns" + why
            else:
                s = (by.get(f"fp32_vs_{int8}_{key}") or {}) if int8 else {}
                basis = "p50 of rows timed one after another" + why
                if s.get("ratio") is None and s.get("reason"):
                    basis += f"; {s['reason']}"
        targets.append(_target(f"CPU INT8 vs FP32 (ONNX Runtime CPU), {label}", ">=", TARGET_INT8_VS_FP32,
                               s.get("ratio"), "x", basis if int8 else "the package has no INT8 file"))
    s = by.get(f"fp32_vs_{int8}_cpu_full_mask") if int8 else None
    targets.append(_target("CPU INT8 vs FP32 (ONNX Runtime CPU), per 1024x1024 image with its full-size mask", ">=",
                           TARGET_INT8_VS_FP32, s["ratio"] if s else None, "x",
                           None if int8 else "the package has no INT8 file"))
    r = _find(lat, int8, cpu) if int8 else None
    size = report["config"]["image_size"]
    cores = report["machine"].get("cpu_cores_usable")
    targets.append(_target(f"INT8 package, one {size}x{size} image on this CPU ({cores} cores), p50", "<=",
                           TARGET_INT8_IMAGE_MS, _p50(r), "ms",
                           None if size == 1024 else "the target is defined for 1024x1024", applicable=size == 1024))
    return {"speedups": sp, "targets": targets}


def _target(name: str, op: str, target: float, measured: float | None, unit: str, note: str | None,
            applicable: bool = True) -> dict:
    """passed: True/False when measured here and the target applies to what was measured, else None."""
    passed = None
    if measured is not None and applicable:
        passed = measured >= target if op == ">=" else measured <= target
    return {"name": name, "op": op, "target": target, "unit": unit, "measured": measured, "passed": passed,
            "note": note}


# ---------------------------------------------------------------- markdown

def _band(row: dict, domain: str) -> str:
    """'k/n (share%)' of a row's images in the band, for one domain or "all"; '—' when not counted."""
    b = (row.get("band") or {}).get(domain)
    if not b or b.get("share") is None or row.get("variant") == "fp32":
        return "—"
    return f"{b['in_band']}/{b['n']} ({100 * b['share']:.1f}%)"


def _f(x, nd: int = 1, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}{unit}"
    return f"{x}{unit}"


def _mb(n) -> str:
    return "—" if n is None else f"{n / 2**20:.2f}"


def _via_note(rows: list[dict]) -> str:
    adapter = [f"{r['variant']}/{r.get('backend')}" for r in rows if r.get("per_image_via") == "onnx-adapter"]
    bs = {r.get("detector_batch_size") for r in rows if r.get("detector_batch_size")}
    wk = {(r.get("detector_workers"), r.get("threads_per_run")) for r in rows if r.get("detector_workers")}
    out = f" (runtime tile batch {', '.join(map(str, sorted(bs)))}" if bs else ""
    if wk:
        out += (", " if out else " (") + "; ".join(f"{w} concurrent batch{'es' if w > 1 else ''} of {t or 'all'} "
                                                  f"thread{'s' if t != 1 else ''} each" for w, t in sorted(wk))
    out += ")" if out else ""
    if adapter:
        out += f"; the Detector did not load {', '.join(adapter)}, so the bench's ONNX adapter (same steps) timed them"
    return out


OTHER_CPU_WARN = 0.15  # other processes' share of the machine's CPU while a row was timed


def shared_cpu(report: dict) -> str | None:
    """Why the run's CPU latencies are suspect, or None. Uses each timed row's measured share of
    CPU taken by other processes (latency.other_cpu_share); the load average only where no row
    measured it (it counts the bench's own workers too)."""
    # CPU rows only: a GPU row's latency does not suffer from a busy CPU the same way
    shares = {f"{r['variant']} ({r['backend']})": r.get("cpu_other_share") for r in report.get("latency", [])
              if r.get("kind") == "student" and r.get("status") == "ok" and r.get("backend") == "ort-cpu"}
    shares["paired"] = (report.get("paired") or {}).get("cpu_other_share")
    shares = {k: v for k, v in shares.items() if v is not None}
    if shares:
        bad = {v: x for v, x in shares.items() if x > OTHER_CPU_WARN}
        return ", ".join(f"{v}: other processes used {x:.0%} of the CPU" for v, x in bad.items()) or None
    m = report.get("machine", {})
    loads = [x for x in (m.get("load_avg_start"), m.get("load_avg_end")) if x is not None]
    cores = m.get("cpu_cores_usable") or m.get("cpu_cores") or 1
    if loads and max(loads) > 0.75 * cores:
        return f"1-min load average {max(loads):.1f} on {cores} cores"
    return None


def markdown(report: dict) -> str:
    from .package import forced_precisions, tag

    m = report["machine"]
    pkg = report["package"]
    forced = forced_precisions(report)
    lines = ["# DeFakerOne-Edge benchmark", "",
             f"- machine: {describe(m)}; ONNX Runtime providers: {', '.join(m.get('onnxruntime_providers') or [])}",
             f"- package: `{pkg['path']}` ({pkg['model_id']}, tile {pkg['tile']}, overlap {pkg['overlap']}, "
             f"threshold {_f(pkg['threshold'], 3)}), manifest sha256 `{pkg['manifest_sha256'][:12]}`",
             f"- created {report['created']}; schema {report['format']} v{report['schema_version']}", ""]
    shared = shared_cpu(report)
    if shared:
        lines[-1:-1] = [f"- **the CPU was shared while latencies were timed** ({shared}): CPU latencies are "
                        "inflated and ratios noisier; rerun on an idle machine for final numbers"]
    d = report.get("data")
    if d:
        lines += [f"- data: `{d['path']}`: {d['n']} images ({d['n_fake']} fake, {d['n_with_mask']} with masks), "
                  f"domains {d['domains']}", ""]
    lines += ["## Latency", "",
              "Per image: a seeded " + f"{report['config']['image_size']}² RGB array through `Detector.check` (the "
              "runtime's tiling, normalization, tile batches, aggregation and quarter-resolution mask; no decoding; "
              "fallback off), one image at a time" + _via_note(report["latency"]) + ". +mask: the same plus reading "
              "`Verdict.mask` (the full-size mask, made on access). Per tile: one tile, batch 1, the model alone. "
              "p50/p90/p99 over the runs after warm-up; each row measured in its own process.", "",
              "| variant | backend | status | runs | image p50 ms | p90 | p99 | +mask p50 ms | tiles | tile p50 ms "
              "| tiles/s (batch) | peak RSS MiB | GPU MiB | size MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["latency"]:
        pi, pt, th = r.get("per_image_ms") or {}, r.get("per_tile_ms") or {}, r.get("throughput") or {}
        status = r.get("status") if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason')}"
        tput = f"{_f(th.get('tiles_per_s'))} ({th.get('best_batch')})" if th.get("tiles_per_s") else "—"
        lines.append(f"| {tag(r['variant'], forced)} | {r.get('backend')} | {status} | {r.get('runs')} | {_f(pi.get('p50'))} | "
                     f"{_f(pi.get('p90'))} | {_f(pi.get('p99'))} | {_f((r.get('per_image_full_mask_ms') or {}).get('p50'))} | "
                     f"{_f(r.get('tiles_per_image'))} | {_f(pt.get('p50'), 2)} | "
                     f"{tput} | {_f(r.get('peak_rss_mb'), 0)} | {_f(r.get('gpu_peak_mb'), 0)} | {_mb(r.get('model_bytes'))} |")
    pr = report.get("paired")
    if pr:
        lines += ["", "### FP32 and CPU INT8 timed in turns", "",
                  "One process, both Detectors loaded; each round times every variant once on the same tile "
                  "(batch 1), the same batch of tiles and the same image, so a slow spell of a shared CPU slows both. Ratio: the median "
                  "over rounds of each round's own ratio. These are the ratios the INT8 targets use.", ""]
        if pr.get("status") != "ok":
            lines.append(f"Not measured: {pr.get('status')} ({pr.get('reason')})")
        else:
            lines += [f"| variant | rounds | tile p50 ms (batch 1) | ratio vs {pr['reference']} | tile p50 ms "
                      f"(batch {pr.get('batch')}) | ratio | image p50 ms | ratio | threads per run |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for v, x in pr["variants"].items():
                cells = [f"{_f((x.get(f'per_{w}_ms') or {}).get('p50'), 2)} | {_f(x.get(f'ratio_{w}'), 2, 'x')}"
                         for w in ("tile", "tile_batch", "image")]
                lines.append(f"| {v} | {pr.get('runs')} | " + " | ".join(cells)
                             + f" | {pr.get('threads_per_run') or 'ORT default'} |")
    cut = (report.get("package") or {}).get("pixel_threshold")
    lines += ["", f"## Accuracy (on {report.get('accuracy_backend')})", "",
              f"Pixel F1 and IoU at the package's pixel threshold ({_f(cut, 3)}: the binary mask a user gets); "
              "best F1 is each image's best cut, pixel AUC needs no cut.", "",
              "| variant | status | via | AUC | bal. acc | pixel F1 | best F1 | pixel AUC | IoU | same decision vs fp32 "
              "| mean abs dprob vs fp32 | same decision vs teacher | fallbacks | in band (FP32 re-runs) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["accuracy"]:
        h = r.get("headline") or {}
        ag = r.get("agreement") or {}
        f32, te = ag.get("vs_fp32") or {}, ag.get("vs_teacher") or {}
        status = r.get("status") if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason')}"
        lines.append(f"| {tag(r['variant'], forced)} | {status} | {r.get('via', '—')} | {_f(h.get('image_auc'), 3)} | "
                     f"{_f(h.get('balanced_acc'), 3)} | {_f(h.get('pixel_f1'), 3)} | {_f(h.get('pixel_f1_best'), 3)} | "
                     f"{_f(h.get('pixel_auc'), 3)} | {_f(h.get('pixel_iou'), 3)} | {_f(f32.get('same_decision'), 3)} | {_f(f32.get('mean_abs_dprob'), 4)} | "
                     f"{_f(te.get('same_decision'), 3)} | {_f(r.get('n_fallback'))} | {_band(r, 'all')} |")
    per_dom = [(r["variant"], dom, v) for r in report["accuracy"] if r.get("metrics")
               for dom, v in r["metrics"].get("per_domain", {}).items()]
    if per_dom:
        rows = {r["variant"]: r for r in report["accuracy"]}
        lines += ["", "Per domain (in band: the images a Detector with its fallback on re-runs at FP32, only their "
                  "deciding tiles; the scores above are the variant's own):", "",
                  "| variant | domain | n | AUC | bal. acc | pixel F1 | IoU | in band |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v} | {dom} | {x.get('n')} | {_f(x.get('image_auc'), 3)} | {_f(x.get('balanced_acc'), 3)} | "
                  f"{_f(x.get('pixel_f1'), 3)} | {_f(x.get('pixel_iou'), 3)} | {_band(rows[v], dom)} |"
                  for v, dom, x in per_dom]
    lines += ["", "## Speedups (ratios of p50 per image, measured in this run)", ""]
    for s in report.get("speedups", []):
        lines.append(f"- **{s['name']}**: {_f(s['ratio'], 2, 'x')} — {s['what']}"
                     + (f" ({s['reason']})" if s.get("reason") else ""))
    lines += ["", "## Targets", "", "| target | measured | pass |", "|---|---|---|"]
    for t in report.get("targets", []):
        ok = {True: "yes", False: "**no**", None: "not measured"}[t["passed"]]
        nd = 2 if t["unit"] == "x" else 1  # 1.29x must not print as a passing-looking 1.3x
        lines.append(f"| {t['name']} {t['op']} {t['target']:g}{t['unit']} | {_f(t['measured'], nd, t['unit'])} | {ok}"
                     + (f" ({t['note']})" if t.get("note") else "") + " |")
    rb = report.get("robustness")
    if rb and rb.get("rows"):
        lines += ["", f"## Robustness (on {rb.get('backend')}, {rb.get('n_images')} images)", "",
                  "Blur levels are OpenCV kernel sizes k; the Gaussian's sigma is 0.3((k-1)/2 - 1) + 0.8 px "
                  "(k 3, 7, 15, 23: sigma 0.8, 1.4, 2.6, 3.8). Noise levels are sigma in 0..255 units. "
                  + ("`clean` is the same images unperturbed." if rb.get("clean") else
                     "This report has no clean baseline on these images (the accuracy table's is on all of the "
                     "data); JPEG at quality 100 is the nearest to it."), "",
                  "| variant | perturbation | level | AUC | pixel F1 | bal. acc |", "|---|---|---|---|---|---|"]
        lines += [f"| {tag(r['variant'], forced)} | clean | — | {_f(r.get('image_auc'), 3)} | "
                  f"{_f(r.get('pixel_f1'), 3)} | {_f(r.get('balanced_acc'), 3)} |" for r in rb.get("clean") or []]
        lines += [f"| {tag(r['variant'], forced)} | {r['perturbation']} | {r['level']:g} | {_f(r.get('image_auc'), 3)} | "
                  f"{_f(r.get('pixel_f1'), 3)} | {_f(r.get('balanced_acc'), 3)} |" for r in rb["rows"]]
    cmp_ = report.get("compare")
    if cmp_:
        from .compare import compare_markdown

        lines += ["", compare_markdown(cmp_)]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(markdown(report), encoding="utf-8")
    return path
