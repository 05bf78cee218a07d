"""Latency, throughput and peak memory, one variant per subprocess.

Why a subprocess per (variant, backend): peak RSS (VmHWM) is a per-process high-water mark, so
two models measured in one process would mix; a crash in one (an FP8 Q/DQ graph an ORT build
cannot run, say) costs that row only; and the teacher's gigabytes are returned to the OS before
the student is timed. The worker (`python -m defaker_edge.bench._worker`) reads a job (JSON) on
stdin, runs `measure_onnx` or `measure_teacher` and prints one `BENCH_RESULT {json}` line on stdout.

What is timed, after warm-up:
- per tile: one T x T tile in the model's input format (prepared untimed), batch 1, `session.run` only, on the Detector's session (so at
  its threads per run: all cores with the default single worker);
- per image: a seeded 1024 x 1024 RGB array through `Detector.check` (the runtime's tiling,
  normalization, batching, aggregation and quarter-resolution mask stitching; no file decoding),
  or the bench's ONNX adapter doing the same steps when the Detector cannot load the variant;
- per image with the full-size mask: the same, plus reading `Verdict.mask` (the bilinear upsample
  and sigmoid at H x W, which the Detector does only when the mask is asked for);
- throughput: tiles/s at each batch size, with as many concurrent streams as the Detector has
  workers, the best reported.
A seeded noise image is used: a static-shape network's cost does not depend on pixel values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque

import numpy as np

from .machine import usable_cpus

RESULT_TAG = "BENCH_RESULT "


def progress(it, desc: str, **kw):
    """tqdm on stderr when installed (build extra) and stderr is a terminal (disable=None: a log
    file or CI gets no carriage-return noise); plain iteration on a runtime-only install."""
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, file=sys.stderr, **{"disable": None, **kw})


def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max())}


def _proc_status_mb(key: str) -> float | None:
    """VmHWM (peak) or VmRSS (now) of this process in MiB; getrusage as the fallback for the peak."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    if key == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return None


def cpu_seconds() -> tuple[float, float, float, int] | None:
    """(wall s, busy CPU s summed over this process's CPUs, CPU s of this process, those CPUs' count)
    now; None off Linux.

    Busy is /proc/stat's user + nice + system + irq + softirq + steal of each `cpuN` line in the
    affinity set (a benchmark pinned to 2 of 16 cores competes only there): steal is time the
    hypervisor gave a vCPU to someone else, which a benchmark loses just the same."""
    cores = usable_cpus()
    busy = 0.0
    try:
        hz = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat", encoding="utf-8") as f:
            for line in f:
                name, *vals = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if int(name[3:]) in cores:
                    v = [int(x) for x in vals[:8]]
                    busy += (sum(v) - v[3] - v[4]) / hz
    except (OSError, ValueError, AttributeError):
        return None
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system, len(cores)


def other_cpu_share(start: tuple[float, float, float, int] | None) -> float | None:
    """The share of this process's CPUs that other processes (or the hypervisor) used since `start`.

    Why not the load average: it counts the bench's own workers (a 2-thread worker leaves a
    1-minute average near 2 behind it), so it flagged every run as shared; this subtracts them."""
    end = cpu_seconds()
    if start is None or end is None or end[0] <= start[0]:
        return None
    other = (end[1] - start[1]) - (end[2] - start[2])
    return round(min(1.0, max(0.0, other) / ((end[0] - start[0]) * end[3])), 4)


def _timed(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _throughput(run, xs: list[np.ndarray], runs: int) -> float:
    """Tiles/s with len(xs) threads each calling run(x) `runs` times (after one warm-up call each)."""
    from concurrent.futures import ThreadPoolExecutor

    for x in xs:
        run(x)

    def loop(x):
        for _ in range(runs):
            run(x)

    t0 = time.perf_counter()
    if len(xs) == 1:
        loop(xs[0])
    else:
        with ThreadPoolExecutor(len(xs)) as ex:
            list(ex.map(loop, xs))
    return sum(len(x) for x in xs) * runs / (time.perf_counter() - t0)


def bench_image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _random_pixels(rng: np.random.Generator, b: int, tile: int) -> np.ndarray:
    """b random uint8 tiles [b, T, T, 3]."""
    return rng.integers(0, 256, (b, tile, tile, 3), dtype=np.uint8)


def _session_run(sess):
    """feeds (every input by name: runtime.backends.onnxruntime.session_feeds) -> sess.run(all outputs)."""
    outs = [o.name for o in sess.get_outputs()]
    return lambda feeds: sess.run(outs, feeds)


def measure_onnx(job: dict) -> dict:
    """Runs inside the worker: one ONNX file on one ORT provider.

    Per image goes through the runtime's Detector (fallback='never', so this variant answers)
    when it loads; otherwise through the bench's ONNX adapter, and the row says why. The per-tile
    and throughput runs use the same ORT session, so the peak RSS is one model's.
    """
    from ..runtime.backends.onnxruntime import session_feeds
    from .adapter import DetectorPredictor, OnnxPredictor, make_session, static_batch

    base = _proc_status_mb("VmRSS")
    T, runs, warmup = int(job["tile"]), int(job["runs"]), int(job["warmup"])
    threads = int(job.get("threads", 0))
    t0 = time.perf_counter()
    pred, via_note = None, None
    if job.get("package") and job.get("use_detector", True):
        try:
            pred = DetectorPredictor(job["package"], precision=job["precision"], provider=job["provider"],
                                     threads=threads)
            if pred.session is None:
                raise RuntimeError("the Detector's backend exposes no ORT session")
        except Exception as e:  # measured through the adapter instead; the row records why
            pred, via_note = None, f"Detector: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if pred is not None:
        sess = pred.session
    else:
        sess = make_session(job["path"], job["provider"], threads)
        pred = OnnxPredictor(job["path"], tile=T, overlap=int(job["overlap"]),
                             temperature=float(job.get("temperature", 1.0)), session=sess)
    load_ms = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(int(job.get("seed", 0)))
    fixed = static_batch(sess)
    run = _session_run(sess)
    x1 = session_feeds(sess, _random_pixels(rng, 1, T))
    cpu0 = cpu_seconds()
    per_tile = _timed(lambda: run(x1), runs, warmup)
    img = bench_image(int(job["image_size"]), int(job.get("seed", 0)))
    n_tiles = 0

    det = getattr(pred, "det", None)

    def one_image():
        nonlocal n_tiles
        if det is not None:  # the verdict: Detector.check makes the full-size mask only on access
            n_tiles = det.check(img).n_tiles
        else:  # the adapter computes its mask eagerly
            n_tiles = pred.check(img).timings.get("tiles", 0)

    per_image = _timed(one_image, runs, warmup)
    # the verdict plus the full-size mask (DetectorPredictor.check reads Verdict.mask)
    per_image_mask = _timed(lambda: pred.check(img), runs, warmup) if det is not None else per_image
    by_batch: dict[str, float] = {}
    t_runs = max(2, int(job.get("throughput_runs", max(3, runs // 5))))
    # as many concurrent streams as the Detector runs batches at once (its workers), each on its own
    # batch: tiles/s is then what this machine does with the runtime's own session settings
    info = det.info() if det is not None else {}
    streams = int(info.get("workers") or 1)
    for b in job.get("batches", [1, 2, 4, 8]):
        if fixed and b != fixed:
            continue
        xs = [session_feeds(sess, _random_pixels(rng, int(b), T)) for _ in range(streams)]
        by_batch[str(b)] = _throughput(run, xs, t_runs)
    best = max(by_batch, key=by_batch.get) if by_batch else None
    return {"status": "ok", "provider_ran": sess.get_providers()[0], "load_ms": load_ms,
            "cpu_other_share": other_cpu_share(cpu0),
            "per_image_via": pred.kind, "per_image_via_note": via_note,
            "detector_batch_size": getattr(getattr(pred, "det", None), "batch_size", None),
            "detector_workers": info.get("workers"), "threads_per_run": info.get("threads_per_run") or threads or None,
            "tiles_per_image": n_tiles, "per_tile_ms": percentiles(per_tile), "per_image_ms": percentiles(per_image),
            "per_image_full_mask_ms": percentiles(per_image_mask),
            "throughput": {"best_batch": int(best) if best else None,
                           "tiles_per_s": by_batch[best] if best else None, "by_batch": by_batch,
                           "runs_per_batch": t_runs, "streams": streams},
            "static_batch": fixed, "baseline_rss_mb": base, "peak_rss_mb": _proc_status_mb("VmHWM")}


def measure_paired(job: dict) -> dict:
    """Runs inside the worker: the reference variant (FP32) and the others timed in turns, in one process.

    Timed: one tile at batch 1, a batch of tiles at the Detector's batch size (reported per tile),
    and the Detector's check of one image. Why, beside the per-variant rows: those are measured one after another, minutes apart, and a
    shared CPU's speed drifts by more than INT8's gain in that time (a 1.47x ratio one hour, 1.03x
    the next, on the development VM). Here each round times every variant once, on the same tile
    and the same image, so a slow spell slows all of them; the ratio is the median over rounds of
    each round's own ratio. The Detector's ONNX Runtime sessions do not spin-wait (OrtBackend), so
    the idle one does not steal the cores of the one being timed.
    """
    from ..runtime.backends.onnxruntime import session_feeds
    from .adapter import DetectorPredictor, static_batch

    T, runs, warmup = int(job["tile"]), int(job["runs"]), int(job["warmup"])
    threads = int(job.get("threads", 0))
    names = list(job["precisions"])
    preds = {p: DetectorPredictor(job["package"], precision=p, provider=job["provider"], threads=threads)
             for p in names}
    rng = np.random.default_rng(int(job.get("seed", 0)))
    # a file with a fixed batch runs at that batch only: both "tile" runs then use it
    fixed = {static_batch(pred.session) for pred in preds.values()} - {None}
    if len(fixed) > 1:
        raise RuntimeError(f"the files have different fixed batch sizes {sorted(fixed)}: not comparable tile for tile")
    b1 = fixed.pop() if fixed else 1
    # the runtime's own tile batch too: at batch 1 a tile's few large ops leave threads idle, and
    # the INT8 kernels lose more of their gain to that than FP32 does
    bsz = b1 if b1 > 1 else int(preds[names[0]].det.batch_size)
    u1, ub = _random_pixels(rng, b1, T), _random_pixels(rng, bsz, T)  # the same pixels for every variant
    img = bench_image(int(job["image_size"]), int(job.get("seed", 0)))
    calls = {}
    for p, pred in preds.items():
        run = _session_run(pred.session)
        # each in its model's input format, prepared before timing (per image, the check prepares its own)
        x1, xb = session_feeds(pred.session, u1), session_feeds(pred.session, ub)
        calls[p] = {"tile": (lambda r=run, x=x1: r(x)), "tile_batch": (lambda r=run, x=xb: r(x)),
                    "image": (lambda d=pred.det: d.check(img))}
    out: dict = {"status": "ok", "reference": names[0], "runs": runs, "warmup": warmup,
                 "threads_per_run": preds[names[0]].det.info().get("threads_per_run") or threads or None,
                 "batch": bsz, "batch_tile": b1,
                 "variants": {p: {} for p in names}}
    cpu0 = cpu_seconds()
    for what in ("tile", "tile_batch", "image"):
        times: dict[str, list[float]] = {p: [] for p in names}
        per = {"tile": b1, "tile_batch": bsz, "image": 1}[what]  # reported per tile (per image)
        for i in progress(range(warmup + runs), f"paired {what}s"):
            # the order alternates by round, so neither variant always runs on caches the other warmed
            for p in (names if i % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                calls[p][what]()
                if i >= warmup:
                    times[p].append((time.perf_counter() - t0) * 1e3 / per)
        ref = np.asarray(times[names[0]])
        for p in names:
            v = out["variants"][p]
            v[f"per_{what}_ms"] = percentiles(times[p])
            v[f"ratio_{what}"] = float(np.median(ref / np.asarray(times[p])))
    out["cpu_other_share"] = other_cpu_share(cpu0)
    return out


def measure_teacher(job: dict) -> dict:
    """Runs inside the worker: the teacher (torch) on one 1024 x 1024 image, `runs` times."""
    import torch

    from .teacher_adapter import load_teacher_for_bench

    threads = int(job.get("threads", 0))
    if threads > 0:
        torch.set_num_threads(threads)
    base = _proc_status_mb("VmRSS")
    device = job.get("device", "cpu")
    t0 = time.perf_counter()
    teacher, info = load_teacher_for_bench(job["spec"], device=device, dtype=job.get("dtype", "fp32"))
    load_ms = (time.perf_counter() - t0) * 1e3
    img = bench_image(int(job["image_size"]), int(job.get("seed", 0)))
    runs, warmup = int(job["runs"]), int(job["warmup"])

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for i in progress(range(warmup + runs), f"teacher {job['spec']} ({device})"):
            sync()
            t = time.perf_counter()
            teacher.predict(img)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"status": "ok", "provider_ran": f"torch-{device}", "load_ms": load_ms, "per_image_ms": percentiles(times),
            "per_tile_ms": None, "tiles_per_image": None, "throughput": None, "baseline_rss_mb": base,
            "peak_rss_mb": _proc_status_mb("VmHWM"), "gpu_peak_mb": gpu_mb, **info}


def run_job(job: dict, timeout_s: float, stream_stderr: bool = False) -> dict:
    """Run one job in a fresh interpreter; a crash, a timeout or no result becomes a failed row."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen([sys.executable, "-m", "defaker_edge.bench._worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    tail: deque[str] = deque(maxlen=20)

    def relay():  # keep the last lines for the reason; show progress bars live when asked
        for line in proc.stderr:
            tail.append(line.rstrip())
            if stream_stderr:
                sys.stderr.write(line)

    out_lines: list[str] = []

    def collect():
        out_lines.extend(proc.stdout)

    threads = [threading.Thread(target=relay, daemon=True), threading.Thread(target=collect, daemon=True)]
    for th in threads:
        th.start()
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"status": "failed", "reason": f"timed out after {timeout_s:.0f} s"}
    for th in threads:
        th.join(timeout=5)
    out = "".join(out_lines)
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    last = next((ln for ln in reversed(tail) if ln.strip()), "")
    return {"status": "failed", "reason": f"worker exited with code {proc.returncode} and no result: {last[:300]}"}
