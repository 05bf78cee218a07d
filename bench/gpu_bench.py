#!/usr/bin/env python
"""One-call GPU benchmark for a lent H100/H200 (see bench/README.md).

Measures, in one run under a global time budget (default 450 s, so a <= 8-minute call has room):
  - the real-size teacher (`defakerone-2b` preset, random weights, bf16) on one 1024x1024 image;
  - the student in FP32 and FP16 (PyTorch), eager and CUDA-graph replay, per 512 tile (batch 1)
    and per 1024x1024 image (its tiles as one batch);
  - ModelOpt INT8 and FP8 fake-quant accuracy deltas against the FP32 student (if modelopt imports);
and prints the table last; writes $OUT/gpu_bench.json (or --out). Needs torch + this repo only:
no onnxruntime-gpu, no tensorrt. Each part runs in try/except and records its failure; a part
that would not fit the remaining budget is skipped with that reason. Every ratio is computed from
rows of this one run.

`--cpu-smoke` runs every part on CPU with tiny presets (the `tiny` teacher, `compact-s` student at
a 64 tile, few runs) so the script is tested where no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a plain checkout: the package need not be installed

T0 = time.perf_counter()


class Budget:
    def __init__(self, seconds: float):
        self.deadline = T0 + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def pct(ms: list[float]) -> dict:
    import numpy as np

    a = np.asarray(ms, dtype=float)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "min": float(a.min())}


def timed(fn, runs: int, warmup: int, device, budget: Budget, reserve: float = 0.0) -> list[float]:
    """ms per call (CUDA-synchronized); stops early, keeping what it has, when the budget runs low."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(runs):
        if budget.left() < reserve:
            break
        t = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t) * 1e3)
    return out


# ------------------------------------------------------------------ parts

def load_student(args, device, dtype):
    import torch

    from defaker_edge.student import StudentConfig, build_student, load_student as _load

    src = Path(args.student) if args.student else ROOT / "models" / "default-student"
    if (src / "config.json").is_file():
        model, cfg = _load(src)
        weights = f"checkpoint {src.relative_to(ROOT) if src.is_relative_to(ROOT) else src}"
    else:
        torch.manual_seed(0)
        cfg = StudentConfig.from_preset(args.student_preset, tile=args.tile)
        model = build_student(cfg)
        weights = f"random ({args.student_preset}; no {src})"
    return model.to(device=device, dtype=dtype).eval(), cfg, weights


def n_tiles_per_image(size: int, tile: int) -> int:
    from defaker_edge.runtime.tiling import TileSpec, default_overlap, tile_origins

    return len(tile_origins(size, size, TileSpec(tile=tile, overlap=default_overlap(tile))))


def part_student(args, device, budget: Budget, dtype_name: str, graphs: bool) -> dict:
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    if graphs and device.type != "cuda":
        return {"status": "skipped", "reason": "CUDA graphs need a CUDA device"}
    if dtype is torch.float16 and device.type != "cuda":
        return {"status": "skipped", "reason": "FP16 convolutions are timed on the GPU only"}
    model, cfg, weights = load_student(args, device, dtype)
    T = cfg.tile
    n_img = n_tiles_per_image(args.image_size, T)
    res = {"weights": weights, "tile": T, "tiles_per_image": n_img, "dtype": dtype_name,
           "params": sum(p.numel() for p in model.parameters())}
    from defaker_edge.student.inputs import dummy_inputs

    for name, b in (("per_tile_ms", 1), ("per_image_ms", n_img)):
        # the image, then the compression-history stream's inputs where the student has them
        xs = [a.to(device, dtype) for a in dummy_inputs(model, b, T)]
        xs[0] = torch.randn(b, 3, T, T, device=device, dtype=dtype)
        with torch.inference_mode():
            if graphs:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):  # warm-up on a side stream before capture, as PyTorch asks
                    for _ in range(3):
                        model(*xs)
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    model(*xs)
                fn = g.replay
            else:
                def fn():
                    model(*xs)
            ms = timed(fn, args.runs, args.warmup, device, budget, reserve=args.reserve_s)
        res[name] = pct(ms)
    if device.type == "cuda":
        res["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {"status": "ok", **res}


def part_teacher(args, device, budget: Budget) -> dict:
    import numpy as np
    import torch

    from defaker_edge.teacher import load_teacher

    preset = "tiny" if args.cpu_smoke else args.teacher_preset
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    # build under the device context so 2.2B random parameters are initialised on the GPU,
    # not on the host first (minutes on a CPU, and 9 GB of host memory)
    with torch.device(device):
        teacher = load_teacher(preset, device=str(device))
    teacher.to(dtype).eval()
    build_s = time.perf_counter() - t
    img = np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    with torch.inference_mode():
        ms = timed(lambda: teacher.predict(img), args.teacher_runs, args.teacher_warmup, device, budget,
                   reserve=args.reserve_s)
    res = {"status": "ok" if ms else "failed", "preset": preset, "weights": "random",
           "dtype": str(dtype).replace("torch.", ""), "build_s": build_s,
           "params": sum(p.numel() for p in teacher.parameters()), "per_image_ms": pct(ms)}
    if not ms:
        res["reason"] = "no run finished inside the budget"
    if device.type == "cuda":
        res["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    del teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def eval_set(args, tile: int):
    """Samples for the accuracy deltas: --data, else a few synthetic ones (needs OpenCV), else None."""
    from defaker_edge.data import load_dataset

    if args.data:
        return load_dataset(args.data)[:args.eval_n], f"--data {args.data}"
    try:
        from defaker_edge.data.synth import SynthConfig, synthesize

        out = Path(os.environ.get("OUT") or "/tmp") / "gpu_bench_synth"
        synthesize(SynthConfig(out=out, n=args.eval_n, seed=0, size_min=max(96, tile), size_max=max(160, 2 * tile),
                               overwrite=True))
        return load_dataset(out / "manifest.jsonl"), f"synthetic (n={args.eval_n}, seed 0)"
    except Exception as e:
        return None, f"no data ({type(e).__name__}: {e}); deltas on random tiles only"


class TorchSession:
    """Looks like an ORT session to the bench's tile predictor, so one stitching code is used."""

    def __init__(self, model, device, dtype, tile):
        self.model, self.device, self.dtype, self.tile = model, device, dtype, tile

    def get_inputs(self):
        return [type("I", (), {"name": "image", "shape": [None, 3, self.tile, self.tile]})()]

    def get_outputs(self):
        return [type("O", (), {"name": n})() for n in ("fake_logit", "mask_logits")]

    def get_providers(self):
        return [f"torch-{self.device.type}"]

    def get_modelmeta(self):
        # what an exported file declares: the compression-history stream, for the feeds' helper
        from defaker_edge.runtime.tiling import DCT_KEY
        from defaker_edge.student.inputs import dct_spec

        spec = dct_spec(self.model)
        meta = {DCT_KEY: f"{spec[0]},{spec[1]}"} if spec else {}
        return type("M", (), {"custom_metadata_map": meta})()

    def run(self, names, feed):
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(feed["image"]).to(self.device, self.dtype)
            more = [torch.from_numpy(feed[k]).to(self.device, self.dtype) for k in ("dct", "qtable") if k in feed]
            f, m = self.model(x, *more)
        return [f.float().cpu().numpy(), m.float().cpu().numpy()]


def part_modelopt(args, device, budget: Budget) -> dict:
    import copy

    import numpy as np
    import torch

    try:
        import modelopt.torch.quantization as mtq
    except Exception as e:
        return {"status": "skipped", "reason": f"modelopt does not import ({type(e).__name__}: {e})"}
    from defaker_edge.bench.accuracy import agreement, evaluate, headline
    from defaker_edge.bench.adapter import OnnxPredictor
    from defaker_edge.runtime.tiling import TileSpec, cut_tiles, default_overlap, normalize, tile_origins

    base, cfg, weights = load_student(args, device, torch.float32)
    T = cfg.tile
    samples, source = eval_set(args, T)
    rng = np.random.default_rng(0)
    if samples:
        from defaker_edge.data.io import load_image

        calib = []
        for s in samples[:max(1, args.calib_n // 4)]:
            img = load_image(s.image)
            calib.append(cut_tiles(img, tile_origins(*img.shape[:2], TileSpec(T, default_overlap(T))), T))
        calib_u8 = np.concatenate(calib)[:args.calib_n]
    else:
        calib_u8 = rng.integers(0, 256, (args.calib_n, T, T, 3), dtype=np.uint8)
    calib_x = torch.from_numpy(normalize(calib_u8)).to(device)

    def loop(m):
        with torch.no_grad():
            for i in range(0, len(calib_x), 8):
                m(calib_x[i:i + 8])

    overlap = default_overlap(T)
    res = {"status": "ok", "weights": weights, "data": source, "calib_tiles": int(len(calib_x)), "variants": {}}

    def score(model):
        pred = OnnxPredictor("<torch>", tile=T, overlap=overlap, session=TorchSession(model, device, torch.float32, T))
        if samples:
            return evaluate(pred, samples, 0.5, desc="modelopt eval", show_progress=False)
        return None

    ref = score(base)
    probe = torch.from_numpy(normalize(rng.integers(0, 256, (8, T, T, 3), dtype=np.uint8))).to(device)
    with torch.inference_mode():
        ref_logit = base(probe)[0].float()
    if ref is not None:
        res["fp32"] = headline(ref.summary)
    for name, qcfg in (("int8", mtq.INT8_DEFAULT_CFG), ("fp8", mtq.FP8_DEFAULT_CFG)):
        if budget.left() < args.reserve_s + 20:
            res["variants"][name] = {"status": "skipped", "reason": "time budget"}
            continue
        try:
            t = time.perf_counter()
            q = mtq.quantize(copy.deepcopy(base), qcfg, forward_loop=loop)
            v = {"status": "ok", "quantize_s": time.perf_counter() - t}
            with torch.inference_mode():
                v["probe_mean_abs_dlogit"] = float((q(probe)[0].float() - ref_logit).abs().mean())
            got = score(q)
            if got is not None:
                h = headline(got.summary)
                v.update(metrics=h, agreement_vs_fp32=agreement(got, ref),
                         deltas={k: (h[k] - res["fp32"][k]) if h.get(k) is not None and res["fp32"].get(k) is not None
                                 else None for k in ("image_auc", "pixel_f1", "balanced_acc")})
            res["variants"][name] = v
        except Exception as e:
            res["variants"][name] = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
    return res


# ------------------------------------------------------------------ main

def env_info(device) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cpu": platform.processor() or platform.machine()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except Exception:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    try:
        import modelopt

        info["modelopt"] = modelopt.__version__
    except Exception:
        info["modelopt"] = None
    return info


def table(parts: dict) -> str:
    rows = ["| part | status | p50 ms/image | p50 ms/tile | note |", "|---|---|---|---|---|"]
    for name, p in parts.items():
        img = (p.get("per_image_ms") or {}).get("p50")
        tile = (p.get("per_tile_ms") or {}).get("p50")
        note = p.get("reason") or ""
        if name == "modelopt":
            note = "; ".join(f"{k}: {v.get('status')} dAUC={(v.get('deltas') or {}).get('image_auc')} "
                             f"dF1={(v.get('deltas') or {}).get('pixel_f1')}" for k, v in p.get("variants", {}).items()) or note
        rows.append(f"| {name} | {p['status']} | {'—' if img is None else f'{img:.2f}'} | "
                    f"{'—' if tile is None else f'{tile:.3f}'} | {note} |")
    return "\n".join(rows)


def ratios(parts: dict) -> dict:
    def p50(name):
        p = parts.get(name) or {}
        return (p.get("per_image_ms") or {}).get("p50") if p.get("status") == "ok" else None

    out = {}
    t = p50("teacher")
    for s in ("student_fp32_eager", "student_fp16_eager", "student_fp32_cudagraph", "student_fp16_cudagraph"):
        if t and p50(s):
            out[f"teacher_vs_{s}"] = t / p50(s)
    if p50("student_fp32_eager") and p50("student_fp16_cudagraph"):
        out["fp32_eager_vs_fp16_cudagraph"] = p50("student_fp32_eager") / p50("student_fp16_cudagraph")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny presets on CPU: tests this script without a GPU")
    ap.add_argument("--budget-s", type=float, default=450.0, help="global time budget in seconds (default 450)")
    ap.add_argument("--reserve-s", type=float, default=15.0, help="seconds kept for writing results")
    ap.add_argument("--student", help="student dir (default models/default-student; random preset if absent)")
    ap.add_argument("--student-preset", default="compact", help="preset when no student dir exists")
    ap.add_argument("--teacher-preset", default="defakerone-2b")
    ap.add_argument("--data", help="manifest for the ModelOpt accuracy deltas (default: synthesize a few)")
    ap.add_argument("--eval-n", type=int, default=48)
    ap.add_argument("--calib-n", type=int, default=128, help="calibration tiles for ModelOpt")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--teacher-runs", type=int, default=5)
    ap.add_argument("--teacher-warmup", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of parts to skip (teacher, modelopt, ...)")
    ap.add_argument("--out", help="JSON path (default $OUT/gpu_bench.json, else ./gpu_bench.json)")
    args = ap.parse_args(argv)
    import torch

    if args.cpu_smoke:  # tiny everything so the whole script runs in a test on 2 cores
        args.student_preset, args.tile, args.image_size = "compact-s", 64, 96  # 4 tiles per image
        args.runs, args.warmup, args.teacher_runs, args.teacher_warmup = 3, 1, 1, 0
        args.eval_n, args.calib_n = min(args.eval_n, 6), min(args.calib_n, 16)
        args.student = args.student or "/nonexistent"  # random compact-s, never the shipped student
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --cpu-smoke to test this script on a CPU", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    budget = Budget(args.budget_s)
    out_path = Path(args.out) if args.out else Path(os.environ.get("OUT") or ".") / "gpu_bench.json"
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "env": env_info(device),
               "config": vars(args), "parts": {}}
    # cheapest and most important first: a budget cut then loses the least
    plan = [("student_fp32_eager", lambda: part_student(args, device, budget, "fp32", False)),
            ("student_fp16_eager", lambda: part_student(args, device, budget, "fp16", False)),
            ("student_fp32_cudagraph", lambda: part_student(args, device, budget, "fp32", True)),
            ("student_fp16_cudagraph", lambda: part_student(args, device, budget, "fp16", True)),
            ("teacher", lambda: part_teacher(args, device, budget)),
            ("modelopt", lambda: part_modelopt(args, device, budget))]
    for name, fn in plan:
        if name in skip:
            results["parts"][name] = {"status": "skipped", "reason": "--skip"}
            continue
        if budget.left() < args.reserve_s + 5:
            results["parts"][name] = {"status": "skipped", "reason": f"time budget ({args.budget_s:.0f} s) spent"}
            continue
        log(f"{name} ...")
        t = time.perf_counter()
        try:
            results["parts"][name] = fn()
        except Exception as e:
            results["parts"][name] = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}",
                                      "traceback": traceback.format_exc()[-2000:]}
        results["parts"][name]["seconds"] = time.perf_counter() - t
        log(f"{name}: {results['parts'][name]['status']} ({results['parts'][name]['seconds']:.1f} s)")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2, default=str))  # after each part: a kill keeps the rest
    results["ratios"] = ratios(results["parts"])
    results["seconds"] = time.perf_counter() - T0
    out_path.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results["ratios"]))
    print(f"{results['env'].get('gpu', 'CPU')} ({results['mode']}), {results['seconds']:.0f} s, wrote {out_path}")
    print(table(results["parts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
