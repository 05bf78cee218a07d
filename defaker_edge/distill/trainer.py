"""The distillation trainer: `distill(DistillConfig) -> DistillResult`.

One process or many (torchrun, DDP). The global batch is the same tiles whatever the world size:
rank r takes items [r*b, (r+1)*b) of the step's global batch (data.py seeds each item by step and
index), so a 2-process run follows the 1-process loss curve. Checkpoints hold weights, optimizer,
scheduler and the loss history; `resume` continues from the last one with the same batches.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from ..artifacts import sha256_file, tool_versions, utc_now
from ..data import Sample, load_dataset
from ..errors import DefakerError
from ..student import StudentConfig, build_student, save_student
from ..student.flops import count_flops
from . import ddp
from .data import AugConfig, ImageStore, TileSampler
from .evaluate import evaluate, headline
from .losses import LossWeights, distill_loss
from .targets import CacheTargets, CropTeacher, OnlineTeacherTargets, is_student_dir
from ..student.inputs import EXTRA, dct_spec
from ..student.inputs import run as run_student

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    data: str
    out: str
    student: str = "block"
    teacher: str | None = None  # directory or preset name, run online
    cache: str | None = None  # a TeacherCache directory (instead of --teacher)
    # A teacher scored on the held-out split for the report only, never trained against. Used when
    # the teacher is too weak to learn from (then training is on ground truth only) so that the
    # report still compares student and teacher on the same images.
    eval_teacher: str | None = None
    # Warm start: a student dir whose config and weights replace `student` (fine-tuning the shipped
    # student on your own data, or continuing a run under a new schedule; --resume continues the same one)
    init: str | None = None
    steps: int = 1500
    tile: int = 512  # the saved/exported tile
    crop: int = 256  # the training crop (fully convolutional: a smaller crop costs less CPU)
    batch: int = 16  # global batch, split over DDP ranks
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup: int = 30
    seed: int = 0
    resume: bool = False
    ckpt_every: int = 100
    stop_at: int | None = None  # stop after this step (checkpointed); continue with resume
    # A wall-clock budget (the compounding program, distill.program): train until it is spent, with
    # one cosine cycle over it (warm restart: each session's weights end annealed), `steps` then only
    # an upper bound. On resume the weights and the optimizer's moments continue; the schedule restarts.
    minutes: float | None = None
    # the same, as process CPU time (all threads): runs compared at equal CPU on a machine other work shares
    cpu_minutes: float | None = None
    ckpt_minutes: float | None = None  # also checkpoint every N minutes (a hard stop loses at most that)
    # processes that cut the batches ahead (0: in the training process). Batches are a function of
    # (seed, step, index), so any number gives the same run; on a GPU the crops, not the net, bind
    workers: int = 0
    threads: int | None = None  # torch intra-op threads per process (default: cores / ranks)
    eval_max: int = 200  # held-out images evaluated at the end (0: skip)
    bf16: bool = False  # bfloat16 autocast of the forward pass (CPU with native bf16, or GPU)
    weights: LossWeights = field(default_factory=LossWeights)
    aug: AugConfig = field(default_factory=AugConfig)


@dataclass
class DistillResult:
    out: Path
    report: dict[str, Any]


class _Train(nn.Module):
    """Student + optional feature adapter under one module, so DDP syncs both."""

    def __init__(self, student: nn.Module, adapter: nn.Module | None):
        super().__init__()
        self.student = student
        self.adapter = adapter
        self._feat: torch.Tensor | None = None
        if adapter is not None:
            last = student.stages[-1] if hasattr(student, "stages") else student.encoder.layer[-1]
            last.register_forward_hook(lambda m, i, o: setattr(self, "_feat", o))

    def forward(self, x, extra=None):
        logit, mask = run_student(self.student, x, extra)
        feat = None
        if self.adapter is not None:
            f = self._feat
            f = f.mean((2, 3)) if f.dim() == 4 else f.mean(1)
            feat = self.adapter(f)
        return logit, mask, feat


def split_samples(data: str) -> tuple[list[Sample], list[Sample], str]:
    samples = load_dataset(data)
    train = [s for s in samples if s.split == "train"] or [s for s in samples if s.split is None]
    for name in ("test", "val"):
        held = [s for s in samples if s.split == name]
        if held:
            return train, held, name
    log.warning("%s has no val/test split: the report's metrics are on the training images", data)
    return train, train, "train"


def _targets(cfg: DistillConfig, teacher: Any):
    feats = cfg.weights.feat > 0
    if teacher is not None:
        return OnlineTeacherTargets(teacher, feats)
    if cfg.cache:
        return CacheTargets(cfg.cache)
    if is_student_dir(cfg.teacher):  # the stand-in teacher: a student-contract model, on the same crops
        return CropTeacher.load(cfg.teacher, bf16=cfg.bf16)
    if cfg.teacher:
        from ..teacher import load_teacher  # the teacher stage

        return OnlineTeacherTargets(load_teacher(cfg.teacher), feats)
    log.warning("no teacher and no cache: training on ground truth only")
    return None


def _teacher_dir(spec: str | None) -> Path | None:
    """The teacher's checkpoint dir (a dir, or a preset that names one, e.g. `reference`), else None."""
    if not spec:
        return None
    if os.path.isdir(spec):
        return Path(spec)
    try:
        from ..teacher import resolve_teacher_spec

        p = resolve_teacher_spec(spec)
    except Exception:  # an unknown preset is reported by load_teacher, with its own message
        return None
    return Path(p) if isinstance(p, Path) and p.is_dir() else None


def _schedule(cfg: DistillConfig, elapsed=None):
    if cfg.minutes or cfg.cpu_minutes:
        budget = 60.0 * (cfg.cpu_minutes or cfg.minutes)

        def timed(step: int) -> float:  # `step` counts from this run's start: each run warms up again
            if step < cfg.warmup:
                return (step + 1) / cfg.warmup
            t = min(1.0, elapsed() / budget)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))
        return timed

    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def distill(cfg: DistillConfig, teacher: Any = None, on_checkpoint=None) -> DistillResult:
    """Train a student from the teacher (online or cached) plus ground truth; write the student dir.

    `on_checkpoint(info)`, if given, is called on the main rank after every checkpoint with
    {"step", "student" (the live module: it may be evaluated; training resumes in train mode),
    "optimizer", "history", "cpu_s" (process CPU seconds over every run of this checkpoint), "final", "path"}."""
    d = ddp.init_distributed()
    if cfg.batch % d.world:
        raise DefakerError(f"--batch {cfg.batch} must be divisible by the number of processes ({d.world})")
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // d.world))
    out = Path(cfg.out)
    ckpt = out / "checkpoint" / "state.pt"
    student = None
    if cfg.init:
        from ..student.io import load_student

        student, scfg = load_student(cfg.init)  # its config and trained weights: train this model on
        if scfg.tile != cfg.tile:
            log.warning("--init %s: its tile is %d; keeping that, not --tile %d", cfg.init, scfg.tile, cfg.tile)
    else:
        scfg = StudentConfig.from_preset(cfg.student, tile=cfg.tile)
    tdir = _teacher_dir(cfg.teacher)
    if scfg.family == "pruned-teacher" and tdir is not None and student is None and not is_student_dir(cfg.teacher):
        from ..student.teacher_init import teacher_vision_dims

        dims = teacher_vision_dims(tdir)
        n = dims["layers"]
        scfg.dim, scfg.heads, scfg.mlp = dims["dim"], [dims["heads"]] * n, [dims["mlp"]] * n
        scfg.head_dim, scfg.init_from = dims["dim"] // dims["heads"], str(tdir)
    crop = cfg.crop
    if scfg.family == "compact" and (crop % 32 or crop > scfg.tile):
        raise DefakerError(f"--crop must be a multiple of 32 and <= --tile, got {crop}")
    if scfg.family == "pruned-teacher" and crop != scfg.tile:
        # a ViT's position embeddings fix its input size: it trains on whole T x T tiles
        log.warning("pruned-teacher students train at crop = tile (%d), not %d", scfg.tile, crop)
        crop = scfg.tile
    train, held, held_name = split_samples(cfg.data)
    targets = _targets(cfg, teacher)
    torch.manual_seed(cfg.seed)
    student = (student if student is not None else build_student(scfg)).to(d.device)
    crop_teacher = targets if isinstance(targets, CropTeacher) else None
    if crop_teacher is not None:
        targets = None  # per crop, not per image: nothing for the image store to fetch
    store = ImageStore(train, targets)
    adapter = None
    if cfg.weights.feat > 0:
        t0 = store.get(0)[2]
        if t0 is None or t0.features is None:
            raise DefakerError("feature KD (--w feat=X) needs teacher features: an online --teacher, "
                               "or a cache made with --features")
        sdim = scfg.widths[-1] if scfg.family == "compact" else scfg.dim
        adapter = nn.Linear(sdim, int(t0.features.shape[-1]))
    net = _Train(student, adapter).to(d.device)
    # channels-last: about 1.5x faster conv training on CPU (measured on the compact student)
    fmt = torch.channels_last if scfg.family == "compact" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    if crop_teacher is not None:
        crop_teacher.model.to(d.device, memory_format=fmt)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    t_start, cpu0 = time.time(), time.process_time()

    def spent() -> float:  # what the budget counts: process CPU seconds, or wall seconds
        return time.process_time() - cpu0 if cfg.cpu_minutes else time.time() - t_start

    budget_s = 60.0 * (cfg.cpu_minutes or cfg.minutes or 0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, spent))
    history: list[dict[str, float]] = []
    start = 0
    cpu_before = 0.0
    if cfg.resume and ckpt.is_file():
        st = torch.load(ckpt, map_location=d.device, weights_only=False)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        if budget_s:  # the moments continue; this run's rate and a new cycle over its budget
            for g in opt.param_groups:
                g["initial_lr"] = cfg.lr
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, spent))
        else:
            sched.load_state_dict(st["sched"])
        history, start = st["history"], st["step"]
        cpu_before = float(st.get("cpu_s", 0.0))
        log.info("resumed from %s at step %d", ckpt, start)
    elif cfg.resume:
        log.warning("--resume: no checkpoint at %s, starting fresh", ckpt)
    model = nn.parallel.DistributedDataParallel(net) if d.enabled else net
    sampler = TileSampler(store, crop, cfg.seed, cfg.aug, dct=dct_spec(student))
    local = cfg.batch // d.world
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    t_start = time.time()
    cpu0 = time.process_time()
    last_ckpt = t_start
    net.train()

    def save(step: int, final: bool) -> None:
        cpu_s = cpu_before + time.process_time() - cpu0
        _save_ckpt(ckpt, net, opt, sched, history, step, cpu_s)
        if on_checkpoint is not None:
            on_checkpoint({"step": step, "student": student, "optimizer": opt, "history": history,
                           "cpu_s": cpu_s, "final": final, "path": ckpt})
            net.train()

    # a bar on a terminal only (None: tqdm's own test); logs and pipes get the checkpoints' lines
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc="distill", disable=None if d.main else True,
               dynamic_ncols=True)
    batches = _batches(sampler, range(start, end), d.rank * local, local, cfg.workers)
    for step in bar:
        b = {k: v.to(d.device, non_blocking=True) for k, v in next(batches).items()}
        b["x"] = b["x"].contiguous(memory_format=fmt)
        if crop_teacher is not None:
            crop_teacher.fill(b)
        with torch.autocast(str(d.device).split(":")[0], dtype=torch.bfloat16,
                            enabled=cfg.bf16):
            logit, mask, feat = model(b["x"], {k: b[k] for k in EXTRA if k in b} or None)
        logit, mask = logit.float(), mask.float()
        feat = feat.float() if feat is not None else None
        loss, parts = distill_loss(logit, mask, b, cfg.weights, feat,
                                   global_sum=(lambda t: ddp.mean_of_sums(t, d)) if d.enabled else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        lval = float(ddp.all_mean(loss.detach(), d))
        history.append({"step": step + 1, "loss": lval, "lr": opt.param_groups[0]["lr"], **parts})
        bar.set_postfix(loss=f"{lval:.4f}")
        now = time.time()
        out_of_time = (bool(budget_s) and spent() >= budget_s) or STOP.is_set()
        if d.enabled and budget_s:  # every rank stops at the same step
            out_of_time = bool(ddp.all_mean(torch.tensor(float(out_of_time)), d) > 0)
        last = step + 1 == end or out_of_time
        due = (step + 1) % cfg.ckpt_every == 0 or (cfg.ckpt_minutes and now - last_ckpt >= 60.0 * cfg.ckpt_minutes)
        if d.main and (due or last):
            save(step + 1, last)
            last_ckpt = time.time()
        if out_of_time:
            end = step + 1
            break
    bar.close()
    train_s = time.time() - t_start
    cpu_run = time.process_time() - cpu0  # this run's training CPU (all threads), before any evaluation
    report: dict[str, Any] = {}
    if d.main:
        if end < cfg.steps:
            log.info("stopped at step %d of %d; continue with --resume", end, cfg.steps)
        report = _report(cfg, scfg, student, targets, held, held_name, history, train_s, d.world)
        # process CPU time of this run (all threads): what runs compared "at equal CPU" must match, since
        # wall time on a shared machine is not CPU time
        report["cpu_seconds"] = round(cpu_run, 1)
        report["steps_run"] = end - start
        save_student(student, scfg, out, report=report,
                     extra={"distill": {"teacher": cfg.teacher, "cache": cfg.cache, "steps": end}})
    ddp.barrier(d)
    ddp.shutdown(d)
    return DistillResult(out, report)


# Set (by distill.program's SIGTERM/SIGINT handler) to end a run at the next step as if its budget
# were spent: checkpoint, the callback's last held-out scores, the student dir
STOP = threading.Event()


class _Steps(torch.utils.data.Dataset):
    """Item i is the batch of step steps[i]: DataLoader workers cut whole batches, in step order."""

    def __init__(self, sampler: TileSampler, steps: range, start: int, count: int):
        self.sampler, self.steps, self.start, self.count = sampler, steps, start, count

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int):
        return self.sampler.batch(self.steps[i], self.start, self.count)


def _batches(sampler: TileSampler, steps: range, start: int, count: int, workers: int):
    if workers <= 0:
        return (sampler.batch(s, start, count) for s in steps)
    loader = torch.utils.data.DataLoader(_Steps(sampler, steps, start, count), batch_size=None, shuffle=False,
                                         num_workers=workers, prefetch_factor=4, pin_memory=torch.cuda.is_available())
    return iter(loader)


def _save_ckpt(path: Path, net, opt, sched, history, step: int, cpu_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "history": history, "step": step, "cpu_s": cpu_s}, tmp)
    os.replace(tmp, path)


def _report(cfg, scfg, student, targets, held, held_name, history, train_s, world) -> dict[str, Any]:
    student.eval()
    flops = count_flops(student, scfg.tile)
    val = None
    if cfg.eval_max:
        if targets is None and cfg.eval_teacher:
            from ..teacher import load_teacher

            targets = OnlineTeacherTargets(load_teacher(cfg.eval_teacher), False)
        val = evaluate(student, held[:cfg.eval_max], scfg.tile, targets, desc=f"eval {held_name}")
        val["split"] = held_name
    data_path = Path(cfg.data)
    manifest = data_path if data_path.is_file() else data_path / "manifest.jsonl"
    return {
        "format": "defaker-distill-report/1",
        "created": utc_now(),
        "student": {"preset": scfg.preset, "family": scfg.family, "tile": scfg.tile, **flops},
        "teacher": {"spec": cfg.teacher, "cache": cfg.cache, "eval_only": cfg.eval_teacher},
        "data": {"manifest": str(cfg.data), "sha256": sha256_file(manifest) if manifest.is_file() else None,
                 "n_held_out": len(held)},
        "recipe": {k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "teacher", "cache", "resume")},
        "seed": cfg.seed,
        "world_size": world,
        "train_seconds": round(train_s, 1),
        "metrics": headline(val),  # student's and teacher's image_auc / pixel_f1 on the held-out split
        "losses": history,
        "val": val,
        "tools": tool_versions(),
    }
