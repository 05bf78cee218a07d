"""The training program: `train_session(ProgramConfig) -> SessionResult`.

The default model's training spans sessions (each has a couple of CPU hours, sometimes a GPU call)
instead of being one run. So a session
- resumes from the committed state in `models/program/` (the student's weights, config.json, and the
  optimizer's moments in bfloat16: ~3 MB in git), or from `init` (the shipped student) the first time;
- trains for a wall-clock budget, one cosine cycle over it (`distill(minutes=...)`), and checkpoints
  every `ckpt_minutes` into the committed state, so a hard stop loses minutes, not the session;
- scores the weights on the held-out real-photo set (never trained on, never used for thresholds)
  every `eval_minutes` and at the end, and appends a line per checkpoint to the committed ledger
  (`models/ledger.jsonl`): steps, examples seen, CPU hours, the CPU, the training loss, held-out
  image AUC and pixel F1 per domain, and the state's sha256.
Promotion to the shipped package is a separate, gated step (`defaker train compare`, then
scripts/promote.sh): a checkpoint ships only when it beats the shipped student on the held-out set by
more than the bootstrap noise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import sha256_file, utc_now, write_json
from ..data import load_dataset
from ..errors import DefakerError
from ..metrics import Record
from .evaluate import predict_image
from .losses import LossWeights

log = logging.getLogger(__name__)

STUDENT = "student"  # the state dir's student (config.json + model.safetensors)
OPTIM = "optimizer.pt"  # step, examples, CPU seconds, and AdamW's moments (bfloat16)
SCORES = "heldout_scores.json"  # the last held-out evaluation, image by image (for the bootstrap)
BASELINE = "baseline_scores.json"  # the shipped student's, the same way
SNAPSHOTS = "snapshots"  # float16 weights of every held-out-scored checkpoint


@dataclass
class ProgramConfig:
    data: str  # the training manifest (train split trains)
    heldout: str | None  # the held-out real-photo manifest: scored, never trained on (None: not scored here;
    # `defaker train eval` scores the state later, e.g. after a GPU call that had no held-out photos)
    state: str = "models/program"
    ledger: str = "models/ledger.jsonl"
    work: str = "runs/program"  # scratch: the full checkpoint (with the loss history)
    init: str = "models/default-student"  # where a program without state starts
    minutes: float = 60.0
    ckpt_minutes: float = 5.0
    eval_minutes: float = 20.0
    eval_max: int = 300
    lr: float = 2e-3
    batch: int = 16
    crop: int = 256
    seed: int = 31
    bf16: bool = False
    threads: int | None = None
    workers: int = 0  # batch-cutting processes (a GPU machine's spare cores)
    weights: LossWeights = field(default_factory=LossWeights)


@dataclass
class SessionResult:
    state: Path
    ledger: Path
    lines: list[dict[str, Any]]


def cpu_name() -> str:
    from ..bench.machine import _cpu_model

    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        pass
    feats = [f for f in ("avx512_vnni", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{_cpu_model()} ({os.cpu_count()} cores{', ' + ', '.join(feats) if feats else ', AVX2 only' if ' avx2' in flags else ''})"


def _save_state(state_dir: Path, student, cfg_student, opt_state: dict, step: int, cpu_s: float, batch: int,
                examples: int) -> str:
    """Write the committed state atomically enough: the optimizer file last (its step says which weights)."""
    from ..student import save_student

    save_student(student, cfg_student, state_dir / STUDENT, extra={"program": {"step": step}})
    moments = {k: {n: (t.to(torch.bfloat16) if torch.is_tensor(t) and t.dim() > 0 else t) for n, t in v.items()}
               for k, v in opt_state["state"].items()}
    tmp = state_dir / (OPTIM + ".tmp")
    torch.save({"step": step, "cpu_s": cpu_s, "examples": examples, "batch": batch,
                "opt": {"state": moments, "param_groups": opt_state["param_groups"]}}, tmp)
    os.replace(tmp, state_dir / OPTIM)
    return sha256_file(state_dir / STUDENT / "model.safetensors")


def _expand_state(state_dir: Path, ckpt: Path) -> int:
    """The committed state -> the trainer's checkpoint file (weights fp32, moments back to fp32)."""
    from safetensors.torch import load_file

    meta = torch.load(state_dir / OPTIM, map_location="cpu", weights_only=False)
    weights = load_file(str(state_dir / STUDENT / "model.safetensors"))
    opt = meta["opt"]
    opt["state"] = {k: {n: (t.float() if torch.is_tensor(t) and t.dim() > 0 else t) for n, t in v.items()}
                    for k, v in opt["state"].items()}
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {f"student.{k}": v for k, v in weights.items()}, "opt": opt, "sched": {},
                "history": [], "step": int(meta["step"]), "cpu_s": float(meta["cpu_s"])}, ckpt)
    return int(meta["step"])


def heldout_scores(model, samples, tile: int, cut: float = 0.5) -> list[dict[str, Any]]:
    """Per image: label, domain, kind, fake probability, and pixel scores at `cut` / best for fakes."""
    from ..data import load_dataset_image
    from ..metrics import pixel_scores
    from ..runtime.dct import read_qtable
    from ..student.inputs import dct_spec
    from .evaluate import _gt

    model.eval()
    out = []
    with torch.no_grad():
        for s in samples:
            img = load_dataset_image(s.image)
            q = read_qtable(s.image) if dct_spec(model) is not None else None
            p, m = predict_image(model, img, tile, qtable=q)
            gt = _gt(s, img.shape[:2])
            px = pixel_scores(m, gt, threshold=cut) if gt is not None else None
            out.append({"key": s.key, "label": int(s.label), "domain": s.domain, "kind": s.kind,
                        "fake_prob": float(p), "pixel": px})
    return out


def records(scores: list[dict[str, Any]]) -> list[Record]:
    return [Record(r["label"], r["fake_prob"], r["domain"], r["pixel"], r.get("kind")) for r in scores]


def summary_line(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Image AUC, pixel F1 at 0.5 and best-cut, overall and per domain (the ledger's held-out block)."""
    from ..metrics import summarize

    s = summarize(records(scores))
    keep = ("image_auc", "pixel_f1", "pixel_f1_best", "n")
    out = {"all": {k: _r(s["overall"][k]) for k in keep}}
    out.update({d: {k: _r(v[k]) for k in keep} for d, v in s["per_domain"].items()})
    return out


def _r(v):
    """4 decimals; NaN (an AUC over one class) as null, so every ledger line is strict JSON."""
    if isinstance(v, (float, np.floating)):
        return None if v != v else round(float(v), 4)
    return v


def _append(ledger: Path, line: dict[str, Any]) -> None:
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train_session(cfg: ProgramConfig) -> SessionResult:
    """One session of the program: resume, train `minutes`, checkpoint + ledger as it goes."""
    from .trainer import DistillConfig, distill

    state_dir, ledger, work = Path(cfg.state), Path(cfg.ledger), Path(cfg.work)
    held = load_dataset(cfg.heldout)[: cfg.eval_max or None] if cfg.heldout else []
    if cfg.heldout and not held:
        raise DefakerError(f"{cfg.heldout}: no held-out images")
    ckpt = work / "checkpoint" / "state.pt"
    committed = (state_dir / OPTIM).is_file() and (state_dir / STUDENT / "config.json").is_file()
    if committed:
        step0 = int(torch.load(state_dir / OPTIM, map_location="cpu", weights_only=False)["step"])
        local = int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"]) if ckpt.is_file() else -1
        if local < step0:  # a fresh clone, or the committed state moved on: start from git's
            _expand_state(state_dir, ckpt)
        init, resume = str(state_dir / STUDENT), True
    else:
        if ckpt.is_file():
            ckpt.unlink()  # a scratch run that never reached the committed state
        init, resume = cfg.init, False
        log.info("program: no state in %s; starting from %s", state_dir, cfg.init)
    session = {"started": utc_now(), "cpu": cpu_name(), "threads": cfg.threads or torch.get_num_threads(),
               "lr": cfg.lr, "batch": cfg.batch, "crop": cfg.crop, "bf16": cfg.bf16, "minutes": cfg.minutes,
               "git": _git_head(), "data": cfg.data, "data_sha256": _data_sha(cfg.data)}
    lines: list[dict[str, Any]] = []
    last_eval = [time.time()]

    def on_ckpt(info: dict[str, Any]) -> None:
        student = info["student"]
        hist = info["history"][-200:]
        opt_state = info["optimizer"].state_dict()
        sha = _save_state(state_dir, student, student.cfg, opt_state, info["step"], info["cpu_s"], cfg.batch,
                          info["step"] * cfg.batch)
        line = {"time": utc_now(), "step": info["step"], "examples": info["step"] * cfg.batch,
                "cpu_hours": round(info["cpu_s"] / 3600.0, 3), **session,
                "train_loss": _r(np.mean([h["loss"] for h in hist])) if hist else None,
                "loss_parts": {k: _r(np.mean([h[k] for h in hist if k in h])) for k in
                               sorted({k for h in hist for k in h} - {"step", "loss", "lr"})},
                "weights_sha256": sha}
        if held and (info["final"] or time.time() - last_eval[0] >= 60.0 * cfg.eval_minutes):
            t0 = time.time()
            line["heldout"] = _score_into(state_dir, student, held, cfg.heldout, info["step"], sha)
            line["heldout_eval_s"] = round(time.time() - t0, 1)
            line["snapshot"] = _snapshot(state_dir, student, info["step"])
            last_eval[0] = time.time()
            log.info("program: step %d held-out %s", info["step"], json.dumps(line["heldout"]["all"]))
        _append(ledger, line)
        lines.append(line)
        log.info("program: step %d, %d examples, %.3f CPU hours, loss %s", info["step"], line["examples"],
                 line["cpu_hours"], line["train_loss"])

    dcfg = DistillConfig(data=cfg.data, out=str(work), init=init, resume=resume, steps=10 ** 9,
                         minutes=cfg.minutes, ckpt_minutes=cfg.ckpt_minutes, ckpt_every=10 ** 9, lr=cfg.lr,
                         batch=cfg.batch, crop=cfg.crop, seed=cfg.seed, bf16=cfg.bf16, threads=cfg.threads,
                         eval_max=0, weights=cfg.weights, workers=cfg.workers)
    with _graceful_stop():
        distill(dcfg, on_checkpoint=on_ckpt)
    return SessionResult(state_dir, ledger, lines)


def _data_sha(data: str) -> str | None:
    """sha256 of the training manifest (a folder: its manifest.jsonl), so a ledger line names its data."""
    p = Path(data)
    p = p / "manifest.jsonl" if p.is_dir() else p
    return sha256_file(p) if p.is_file() else None


@contextlib.contextmanager
def _graceful_stop():
    """SIGTERM or a first Ctrl-C ends the session at the next step, as its budget would (checkpoint,
    held-out scores, ledger line); a second Ctrl-C interrupts at once. Main thread only."""
    from .trainer import STOP

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        if STOP.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("program: %s: stopping after this step (checkpoint, held-out scores)", signal.Signals(signum).name)
        STOP.set()

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    STOP.clear()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        STOP.clear()


def _snapshot(state_dir: Path, student, step: int) -> str:
    """The scored weights in float16 (~0.8 MB), kept: a snapshot ensemble of the ledger's checkpoints is
    a teacher at no extra training cost (the stand-in until DeFakerOne weights can be loaded)."""
    from safetensors.torch import save_file

    rel = f"{SNAPSHOTS}/step-{step:07d}.safetensors"
    path = state_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).cpu().contiguous()
          for k, v in student.state_dict().items()}
    save_file(sd, str(path), metadata={"format": "defaker-student/1", "step": str(step)})
    return rel


def _score_into(state_dir: Path, model, held, heldout: str, step: int | None, sha: str, name: str = SCORES,
                **extra: Any) -> dict[str, Any]:
    """Score `model` on the held-out samples, write them image by image to state_dir/name (what the
    bootstrap comparison reads), and return the ledger's summary of them."""
    scores = heldout_scores(model, held, model.cfg.tile)
    write_json(state_dir / name, {**extra, "step": step, "weights_sha256": sha, "heldout": heldout, "images": scores})
    return summary_line(scores)


def eval_state(state: str, heldout: str, eval_max: int, ledger: str) -> dict[str, Any]:
    """Score the committed state on the held-out set; a ledger line of kind "eval" (after a session
    that could not score, e.g. a GPU call without the held-out photos)."""
    from ..student.io import load_student

    state_dir = Path(state)
    if not (state_dir / OPTIM).is_file():
        raise DefakerError(f"{state_dir}: no program state (run `defaker train run` first)")
    meta = torch.load(state_dir / OPTIM, map_location="cpu", weights_only=False)
    model, _ = load_student(state_dir / STUDENT)
    held = load_dataset(heldout)[: eval_max or None]
    sha = sha256_file(state_dir / STUDENT / "model.safetensors")
    line = {"time": utc_now(), "kind": "eval", "step": int(meta["step"]), "examples": int(meta["examples"]),
            "cpu_hours": round(float(meta["cpu_s"]) / 3600.0, 3), "cpu": cpu_name(), "weights_sha256": sha,
            "heldout": _score_into(state_dir, model, held, heldout, int(meta["step"]), sha),
            "snapshot": _snapshot(state_dir, model, int(meta["step"]))}
    _append(Path(ledger), line)
    return line


def _git_head() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except OSError:
        return None


def baseline_line(student_dir: str, heldout: str, eval_max: int, ledger: str, state: str) -> dict[str, Any]:
    """Score a student dir (the shipped one) on the held-out set and log it as the baseline to beat."""
    from ..student.io import load_student

    model, _ = load_student(student_dir)
    held = load_dataset(heldout)[: eval_max or None]
    sha = sha256_file(Path(student_dir) / "model.safetensors")
    summary = _score_into(Path(state), model, held, heldout, None, sha, BASELINE, student=student_dir)
    line = {"time": utc_now(), "kind": "baseline", "student": student_dir, "weights_sha256": sha,
            "cpu": cpu_name(), "heldout": summary}
    _append(Path(ledger), line)
    return line
