"""`defaker distill` and `defaker prune`. Standard library only at module level (heavy imports in handlers)."""

from __future__ import annotations

import argparse
import json
import sys

DISTILL_EPILOG = """\
Teacher targets come from --teacher (a checkpoint dir or a preset: `tiny`, `reference`; run once per
image and kept in memory) or from --cache (a `defaker teacher cache` dir). Ground truth from the
manifest (labels, masks) is trained on alongside: teachers are imperfect.

Training cuts native-resolution crops (--crop, origins on the 8x8 JPEG grid) and never resizes a
crop; the saved student's tile is --tile, which is what export and the runtime use.

Recipe (2-core CPU, block): --steps 4000 --batch 16 --crop 256 --lr 4e-3, ~20 min at ~3.5 steps/s
(`compact` is ~1.3 steps/s). --init DIR warm-starts from a student dir: fine-tune the shipped student
on your own forgeries with `--init models/default-student --lr 1e-3`.
Multi-process: torchrun --nproc_per_node N -m defaker_edge distill ... (gloo on CPU, NCCL on GPUs);
--batch is the global batch. --resume continues from OUT/checkpoint/state.pt with the same batches.

examples:
  defaker distill --teacher tiny --data data/train/manifest.jsonl --student block-s --steps 30 --out S
  defaker distill --cache C --data M --student block --out S --steps 4000
  defaker distill --ground-truth-only --data my/manifest.jsonl --init models/default-student --lr 1e-3 --out S2
"""

PRUNE_EPILOG = """\
LoRAPrune: LoRA adapters (peft) on the student's convs/linears; channel, head and block importance
from the LoRA factors' gradients, |(W + BA) * (dB A + B dA)|, EMA-smoothed; channels are masked on a
cubic schedule up to --ratio while LoRA recovers accuracy under the distillation loss; then the
adapters are merged and the layers physically sliced, so the saved student is smaller and needs no peft.

examples:
  defaker prune --student S --data M --ratio 0.5 --out P
  defaker prune --student S --cache C --data M --ratio 0.5 --lora-rank 8 --steps 300 --out P
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="train a student from a teacher (+ ground truth)",
                       description="Distil the teacher into a small, exportable student.",
                       epilog=DISTILL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--teacher", help="teacher checkpoint dir or preset name (run online)")
    src.add_argument("--cache", help="teacher-target cache dir (from `defaker teacher cache`)")
    src.add_argument("--ground-truth-only", action="store_true",
                     help="train on the manifest's labels and masks alone (for when the teacher is too weak "
                          "to learn from); pair with --eval-teacher to still compare against it")
    p.add_argument("--eval-teacher", help="teacher dir or preset scored on the held-out split for the report only")
    p.add_argument("--data", required=True, help="manifest.jsonl (or a dataset dir); train split trains, test/val evaluates")
    p.add_argument("--student", default="block", help="student preset: block (default; INT8-friendly), block-s, "
                   "block-l, compact (inverted-residual CNN), compact-s, compact-l, pruned-teacher-s, ...")
    p.add_argument("--init", metavar="DIR", help="warm start from a student dir (its config and weights; overrides "
                   "--student): fine-tune a shipped student on your data, or train on under a new schedule")
    p.add_argument("--out", required=True, help="output student dir (config.json, model.safetensors, report.json)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--minutes", type=float,
                   help="train for this much wall clock instead (the cosine schedule spans the minutes; --steps "
                        "is then only a cap)")
    p.add_argument("--cpu-minutes", type=float,
                   help="the same budget in process CPU minutes (all threads): runs compared at equal CPU on a "
                        "machine other work shares, e.g. KD vs ground truth only")
    p.add_argument("--tile", type=int, default=512, help="saved/exported tile size T (default 512)")
    p.add_argument("--crop", type=int, default=256, help="training crop, multiple of 32, <= T (default 256)")
    p.add_argument("--batch", type=int, default=16, help="global batch (default 16)")
    p.add_argument("--lr", type=float, default=4e-3, help="peak AdamW learning rate (default 4e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint/state.pt")
    p.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every N steps (default 100)")
    p.add_argument("--stop-at", type=int, help="stop after this step (checkpointed); finish later with --resume")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast for the forward pass (CPUs with AVX-512 BF16 or AMX: measured "
                        "1.2-1.6x faster steps on a Zen 4; weights, optimizer and BatchNorm stay FP32)")
    p.add_argument("--eval-max", type=int, default=200, help="held-out images to evaluate at the end (0: none)")
    p.add_argument("--temperature", type=float, default=2.0, help="KD temperature on the fake probability")
    p.add_argument("--w", action="append", default=[], metavar="NAME=X",
                   help="loss weight, repeatable: kd, mask_kd, dice_kd, gt_cls, gt_mask, gt_dice, gt_block, feat")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=_distill)

    q = sub.add_parser("prune", help="LoRA-prune a student and slice it smaller",
                       description="Structured pruning of a student with LoRA-gradient importance (LoRAPrune).",
                       epilog=PRUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--student", required=True, help="student dir (from `defaker distill`)")
    q.add_argument("--data", required=True, help="manifest.jsonl (train split used for recovery)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--cache", help="teacher-target cache dir")
    g.add_argument("--teacher", help="teacher dir or preset (online); without either: the unpruned student is the teacher")
    q.add_argument("--ratio", type=float, default=0.5, help="fraction of prunable channels/heads to remove (default 0.5)")
    q.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    q.add_argument("--steps", type=int, default=300, help="LoRA steps, pruning + recovery (default 300)")
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--crop", type=int, default=256)
    q.add_argument("--lr", type=float, default=2e-3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--drop-blocks", type=int, help="whole residual blocks to remove, least important first (default: round(ratio/4 x blocks))")
    q.add_argument("--threads", type=int)
    q.add_argument("--eval-max", type=int, default=200, help="held-out images to evaluate (0: none)")
    q.add_argument("--out", required=True)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_prune)


def _weights(items: list[str], temperature: float):
    from ..errors import DefakerError
    from .losses import LossWeights

    w = LossWeights(temperature=temperature)
    for it in items:
        name, _, val = it.partition("=")
        if not hasattr(w, name) or name == "temperature" or not val:
            raise DefakerError(f"--w {it!r}: expected NAME=X with NAME one of kd, mask_kd, dice_kd, gt_cls, gt_mask, gt_dice, gt_block, feat")
        setattr(w, name, float(val))
    return w


def _summary(report: dict) -> dict:
    return {"student": report.get("student"), "metrics": report.get("metrics", {})}


def _distill(args: argparse.Namespace) -> int:
    if args.minutes and args.cpu_minutes:
        from ..errors import DefakerError

        raise DefakerError("give --minutes or --cpu-minutes, not both")
    from ..artifacts import to_jsonable
    from .trainer import DistillConfig, distill

    cfg = DistillConfig(data=args.data, out=args.out, student=args.student, teacher=args.teacher, cache=args.cache,
                        steps=args.steps, minutes=args.minutes, cpu_minutes=args.cpu_minutes, tile=args.tile, crop=args.crop, batch=args.batch, lr=args.lr,
                        seed=args.seed, resume=args.resume, ckpt_every=args.ckpt_every, stop_at=args.stop_at,
                        threads=args.threads, eval_max=args.eval_max, bf16=args.bf16,
                        weights=_weights(args.w, args.temperature), eval_teacher=args.eval_teacher,
                        init=args.init)
    res = distill(cfg)
    if args.json and res.report:
        print(json.dumps(to_jsonable({"out": str(res.out), **_summary(res.report)})))
    elif res.report:
        print(f"student written to {res.out}", file=sys.stderr)
    return 0


def _prune(args: argparse.Namespace) -> int:
    from ..artifacts import to_jsonable
    from .prune import PruneConfig, prune

    cfg = PruneConfig(student=args.student, data=args.data, out=args.out, cache=args.cache, teacher=args.teacher,
                      ratio=args.ratio, lora_rank=args.lora_rank, steps=args.steps, batch=args.batch,
                      crop=args.crop, lr=args.lr, seed=args.seed, drop_blocks=args.drop_blocks,
                      threads=args.threads, eval_max=args.eval_max)
    res = prune(cfg)
    if args.json:
        print(json.dumps(to_jsonable({"out": str(res.out), **_summary(res.report), "prune": res.report.get("prune")})))
    else:
        print(f"pruned student written to {res.out}", file=sys.stderr)
    return 0
