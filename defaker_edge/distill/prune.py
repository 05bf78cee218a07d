"""LoRA pruning (LoRAPrune-style): `prune(PruneConfig) -> PruneResult`.

1. peft LoRA adapters on the student's dense convs / linears (the family's PruneSpec names them).
2. Each step, importance of every weight ~ |(W + s*BA) * s*(dB A + B dA)|: the gradient of W
   estimated through the LoRA factors' gradients (W itself stays frozen), summed per group element
   (channel, head) and per block, EMA-smoothed.
3. On a cubic schedule the least important elements are masked (a 0/1 multiplier where the group's
   channels are produced) and blocks gated off, while LoRA keeps training under the distillation loss
   (teacher/cache targets, or the unpruned student on the same crops, plus ground truth).
4. merge_and_unload, then slice the weights (distill/slicing.py) into a smaller student with no peft.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from ..artifacts import read_json, sha256_file, tool_versions, utc_now
from ..errors import DefakerError
from ..student import build_student, load_student, save_student
from ..student.flops import count_flops
from .data import ImageStore, TileSampler
from .evaluate import evaluate, headline, retention
from .losses import LossWeights, distill_loss
from .slicing import slice_state
from ..student.inputs import EXTRA, dct_spec
from ..student.inputs import run as run_student
from .targets import CropTeacher
from .trainer import DistillConfig, _targets, split_samples

log = logging.getLogger(__name__)


@dataclass
class PruneConfig:
    student: str
    data: str
    out: str
    cache: str | None = None
    teacher: str | None = None
    ratio: float = 0.5
    lora_rank: int = 8
    steps: int = 300
    batch: int = 16
    crop: int = 256
    lr: float = 2e-3
    seed: int = 0
    drop_blocks: int | None = None
    threads: int | None = 2
    eval_max: int = 200
    ema: float = 0.9
    prune_until: float = 0.6  # fraction of the steps over which the cubic schedule ramps to `ratio`
    events: int = 8  # pruning events on the schedule


@dataclass
class PruneResult:
    out: Path
    report: dict[str, Any]


def cubic_ratio(k: int, n: int, final: float) -> float:
    """Sparsity after event k of n: final * (1 - (1 - k/n)^3) (fast early, gentle near the end)."""
    return final * (1.0 - (1.0 - k / n) ** 3)


class _Masks:
    """0/1 multipliers on group outputs and gates on residual blocks, applied by forward hooks."""

    def __init__(self, root: nn.Module, spec, model_prefix: str = ""):
        self.spec = spec
        self.mask = {g.name: torch.ones(g.size) for g in spec.groups}
        self.gate: dict[tuple[str, int], float] = {b: 1.0 for b in spec.blocks}
        self.handles = []
        for g in spec.groups:
            for point in g.mask_points:
                mod = root.get_submodule(model_prefix + point)
                self.handles.append(mod.register_forward_hook(self._mask_hook(g.name, g.unit)))
        for b in spec.blocks:
            mod = root.get_submodule(f"{model_prefix}{b[0]}.{b[1]}")
            self.handles.append(mod.register_forward_hook(self._gate_hook(b)))

    def _mask_hook(self, name: str, unit: int):
        def hook(mod, inp, out):
            m = self.mask[name]
            if bool((m > 0).all()):
                return out
            m = m.repeat_interleave(unit).to(out.dtype)
            return out * (m.view(1, -1, 1, 1) if out.dim() == 4 else m)
        return hook

    def _gate_hook(self, b):
        def hook(mod, inp, out):
            g = self.gate[b]
            return out if g == 1.0 else inp[0] + g * (out - inp[0])  # blocks are x + f(x)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _lora_importance(root: nn.Module, targets: list[str], prefix: str) -> dict[str, torch.Tensor]:
    """Per LoRA-adapted module: |(W + s BA) * s (dB A + B dA)|, shaped like W."""
    out = {}
    for name in targets:
        mod = root.get_submodule(prefix + name)
        A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
        if A.grad is None or B.grad is None:
            continue
        s = mod.scaling["default"]
        W = mod.get_base_layer().weight
        if W.dim() == 4:  # conv: B [out, r, 1, 1], A [r, in, kh, kw]
            Bm, gB = B[:, :, 0, 0], B.grad[:, :, 0, 0]
            delta = torch.einsum("or,rikl->oikl", Bm, A)
            g = torch.einsum("or,rikl->oikl", gB, A) + torch.einsum("or,rikl->oikl", Bm, A.grad)
        else:
            delta = B @ A
            g = B.grad @ A + B @ A.grad
        out[name] = ((W + s * delta) * (s * g)).abs().detach()
    return out


def _group_scores(imp: dict[str, torch.Tensor], spec) -> dict[str, torch.Tensor]:
    scores = {}
    for g in spec.groups:
        acc = torch.zeros(g.size)
        for mod, axis, start in g.members:
            if mod not in imp:
                continue
            w = imp[mod]
            per = w.sum(dim=[d for d in range(w.dim()) if d != axis])
            acc += per[start:start + g.size * g.unit].reshape(g.size, g.unit).sum(1)
        scores[g.name] = acc
    return scores


def _block_scores(imp: dict[str, torch.Tensor], spec) -> dict[tuple[str, int], float]:
    out = {}
    for b in spec.blocks:
        pre = f"{b[0]}.{b[1]}."
        ws = [w for n, w in imp.items() if n.startswith(pre)]
        out[b] = float(sum(w.sum() for w in ws) / max(1, sum(w.numel() for w in ws)))
    return out


def prune(cfg: PruneConfig) -> PruneResult:
    from peft import LoraConfig, get_peft_model

    if not 0.0 < cfg.ratio < 1.0:
        raise DefakerError(f"--ratio must be in (0, 1), got {cfg.ratio}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, scfg = load_student(cfg.student)
    reference = copy.deepcopy(model).eval()  # the unpruned student: teacher of last resort, and the baseline
    spec = model.prune_spec()
    n_blocks = len(spec.blocks)
    drop_n = cfg.drop_blocks if cfg.drop_blocks is not None else round(n_blocks * cfg.ratio / 4)
    drop_n = max(0, min(drop_n, n_blocks - 1))
    train, held, held_name = split_samples(cfg.data)
    dcfg = DistillConfig(data=cfg.data, out=cfg.out, teacher=cfg.teacher, cache=cfg.cache)
    targets = _targets(dcfg, None) if (cfg.teacher or cfg.cache) else None
    # a student-contract teacher runs on each batch's crops; without any teacher the unpruned
    # student does (the reference below)
    crop_teacher = targets if isinstance(targets, CropTeacher) else CropTeacher(reference) if targets is None else None
    if crop_teacher is not None:
        targets = None
    crop = scfg.tile if scfg.family == "pruned-teacher" else cfg.crop  # a ViT's input size is fixed
    # the stream's inputs (dct, qtable) are cut with each crop when the student has the stream
    sampler = TileSampler(ImageStore(train, targets), crop, cfg.seed, dct=dct_spec(model))

    pattern = "^(" + "|".join(n.replace(".", r"\.") for n in spec.lora_targets) + ")$"
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, lora_dropout=0.0, target_modules=pattern)
    peft_model = get_peft_model(model, lcfg)
    prefix = "base_model.model."
    masks = _Masks(peft_model, spec, prefix)
    peft_model.train()
    for m in peft_model.modules():  # frozen statistics: masked channels must not shift BN stats
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    weights = LossWeights()
    ema: dict[str, torch.Tensor] = {}
    block_ema: dict[tuple[str, int], float] = {}
    until = max(1, int(cfg.steps * cfg.prune_until))
    event_at = {max(1, round(until * k / cfg.events)): k for k in range(1, cfg.events + 1)}
    dropped: set[tuple[str, int]] = set()
    history = []
    t0 = last_log = time.time()
    for step in tqdm(range(cfg.steps), desc="prune", dynamic_ncols=True, disable=None):
        b = sampler.batch(step, 0, cfg.batch)
        if crop_teacher is not None:
            crop_teacher.fill(b)
        logit, mask = run_student(peft_model, b["x"], {k: b[k] for k in EXTRA if k in b})
        loss, parts = distill_loss(logit, mask, b, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        imp = _lora_importance(peft_model, spec.lora_targets, prefix)
        for name, sc in _group_scores(imp, spec).items():
            ema[name] = sc if name not in ema else cfg.ema * ema[name] + (1 - cfg.ema) * sc
        for blk, sc in _block_scores(imp, spec).items():
            block_ema[blk] = sc if blk not in block_ema else cfg.ema * block_ema[blk] + (1 - cfg.ema) * sc
        opt.step()
        history.append({"step": step + 1, "loss": float(loss.detach()), **parts})
        if time.time() - last_log >= 60.0:  # logs and pipes get a line a minute (tqdm only draws on a terminal)
            last_log = time.time()
            log.info("prune step %d/%d  loss %.4f  %.2f steps/s", step + 1, cfg.steps, history[-1]["loss"],
                     (step + 1) / (last_log - t0))
        k = event_at.get(step + 1)
        if k is not None:
            r = cubic_ratio(k, cfg.events, cfg.ratio)
            for g in spec.groups:
                n_rm = min(g.size - min(g.min_keep, g.size), int(r * g.size))
                kept = -(-(g.size - n_rm) // g.align) * g.align
                n_rm = g.size - min(g.size, kept)
                sc = ema[g.name].clone()
                sc[masks.mask[g.name] == 0] = -1.0  # already removed stays removed
                order = torch.argsort(sc)
                masks.mask[g.name][order[:n_rm]] = 0.0
            if k == max(1, cfg.events // 2) and drop_n:
                for blk in sorted(block_ema, key=block_ema.get)[:drop_n]:
                    masks.gate[blk] = 0.0
                    dropped.add(blk)
            history[-1]["sparsity"] = r
    train_s = time.time() - t0
    masks.remove()
    merged = peft_model.merge_and_unload()
    keep = {g.name: [int(i) for i in torch.nonzero(masks.mask[g.name]).flatten()] for g in spec.groups}
    new_cfg = type(merged).pruned_config(scfg, {n: len(v) for n, v in keep.items()}, dropped)
    small = build_student(new_cfg)
    small.load_state_dict(slice_state(merged.state_dict(), spec, keep, dropped), strict=True)
    small.eval()
    before, after = count_flops(reference, scfg.tile), count_flops(small, new_cfg.tile)
    new_cfg.pruned = {"ratio": cfg.ratio, "lora_rank": cfg.lora_rank, "steps": cfg.steps,
                      "source_sha256": sha256_file(Path(cfg.student) / "model.safetensors"),
                      "params_before": before["params"], "params_after": after["params"],
                      "dropped_blocks": sorted(f"{p}.{i}" for p, i in dropped)}
    val = None
    if cfg.eval_max:
        val = {"pruned": evaluate(small, held[:cfg.eval_max], new_cfg.tile, targets, desc="eval pruned"),
               "unpruned": evaluate(reference, held[:cfg.eval_max], scfg.tile, None, desc="eval unpruned"),
               "split": held_name}
    report = {
        "format": "defaker-prune-report/1", "created": utc_now(),
        "source": str(cfg.student), "recipe": asdict(cfg),
        "prune": {"params_before": before["params"], "params_after": after["params"],
                  "params_cut": 1.0 - after["params"] / before["params"],
                  "macs_before": before["macs"], "macs_after": after["macs"],
                  "flops_before": before["flops"], "flops_after": after["flops"],
                  "groups": {g.name: {"size": g.size, "kept": keep[g.name]} for g in spec.groups},
                  "dropped_blocks": new_cfg.pruned["dropped_blocks"],
                  "block_importance": {f"{p}.{i}": v for (p, i), v in sorted(block_ema.items())}},
        "student": {"preset": new_cfg.preset, "family": new_cfg.family, "tile": new_cfg.tile, **after},
        "train_seconds": round(train_s, 1), "losses": history, "val": val, "tools": tool_versions(),
    }
    if val is not None and "student" in val["pruned"]:
        # the report's `val` keeps the distill layout (student/teacher) for tools that read either
        v = {**val["pruned"], "unpruned": val["unpruned"].get("student"), "split": held_name}
        if "teacher" not in v:
            # no teacher this run: carry the teacher's metrics from the distill report (same split)
            src = Path(cfg.student) / "report.json"
            prev = read_json(src).get("val") if src.is_file() else None
            if prev and prev.get("teacher") and prev.get("split") == held_name:
                v["teacher"] = prev["teacher"]
                v["teacher_from"] = str(src)
                # retention compares the same images: the teacher (slow, ~2 s an image) was scored
                # on the first n of the split, the pruning check may use more of it
                n_t = int(prev["teacher"]["overall"].get("n") or 0)
                same = v["student"]
                if 0 < n_t < int(v["student"]["overall"].get("n") or 0):
                    same = evaluate(small, held[:n_t], new_cfg.tile, targets, desc="eval pruned (teacher's images)")["student"]
                    v["student_at_teacher_n"] = same
                v["retention"] = retention(same, v["teacher"])
        if v.get("unpruned") and v.get("student"):
            v["auc_drop"] = v["unpruned"]["overall"]["image_auc"] - v["student"]["overall"]["image_auc"]
        report["val"] = v
    report["metrics"] = headline(report["val"])
    save_student(small, new_cfg, cfg.out, report=report)
    return PruneResult(Path(cfg.out), report)
