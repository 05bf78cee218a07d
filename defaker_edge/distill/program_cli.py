"""`defaker train`: the default model's training program, session by session (distill.program).
Standard library only at module level."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
The default model trains over many sessions, not in one run. Each `train run` resumes from the
committed state (models/program/: the student's weights and config, the optimizer's moments), trains
for --minutes of wall clock (one cosine cycle), checkpoints every --ckpt-minutes, scores the held-out
real-photo set every --eval-minutes and at the end, and appends a line per checkpoint to the ledger
(models/ledger.jsonl). Commit models/program and the ledger before a session ends.

A checkpoint is promoted only when `train compare` says it beats the shipped student on the held-out
set by more than the bootstrap noise (scripts/promote.sh runs calibration, quantization and export).

examples:
  defaker train baseline --heldout data/heldout/manifest.jsonl        score the shipped student once
  defaker train run --data runs/default/data/manifest.jsonl --heldout data/heldout/manifest.jsonl --minutes 60 --bf16
  defaker train eval --heldout data/heldout/manifest.jsonl            score the committed state
  defaker train compare                                                latest checkpoint vs the shipped student
  defaker train ensemble --members models/default-student models/program/snapshots/*.safetensors \
    --heldout data/heldout/manifest.jsonl --out runs/ensemble.json    a snapshot-ensemble teacher candidate
  defaker train compare --candidate runs/ensemble.json                 ... against the shipped student
  defaker train plot --out docs/learning_curve.png                    the learning curve from the ledger
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="the default model's training program (resumable across sessions)",
                       description="Train the default student across sessions: resume, checkpoint, ledger, compare.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="train_command", metavar="SUBCOMMAND")

    r = tsub.add_parser("run", help="one session: resume, train --minutes, checkpoint and log as it goes")
    r.add_argument("--data", required=True, help="training manifest (its train split trains)")
    r.add_argument("--heldout", help="held-out manifest: scored, never trained on (without it nothing is scored; "
                   "`defaker train eval` scores the state later)")
    r.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this session (default 60)")
    r.add_argument("--ckpt-minutes", type=float, default=5.0, help="checkpoint every N minutes (default 5)")
    r.add_argument("--eval-minutes", type=float, default=20.0,
                   help="score the held-out set every N minutes, and always at the end (default 20)")
    r.add_argument("--eval-max", type=int, default=300, help="held-out images scored (default 300; 0: all)")
    r.add_argument("--state", default="models/program", help="committed state dir (default models/program)")
    r.add_argument("--ledger", default="models/ledger.jsonl")
    r.add_argument("--work", default="runs/program", help="scratch dir for the full checkpoint")
    r.add_argument("--init", default="models/default-student", help="student dir a program without state starts from")
    r.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of this session's cycle (default 2e-3)")
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--crop", type=int, default=256)
    r.add_argument("--seed", type=int, default=31)
    r.add_argument("--threads", type=int)
    r.add_argument("--workers", type=int, default=0,
                   help="processes cutting batches ahead (default 0; a GPU machine: its spare cores)")
    r.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPUs with AVX-512 BF16/AMX, or a GPU)")
    r.add_argument("--w", action="append", default=[], metavar="NAME=X", help="loss weight, as `defaker distill --w`")
    r.set_defaults(func=_run)

    e = tsub.add_parser("eval", help="score the committed state on the held-out set, into the ledger")
    e.add_argument("--heldout", required=True)
    e.add_argument("--eval-max", type=int, default=300)
    e.add_argument("--state", default="models/program")
    e.add_argument("--ledger", default="models/ledger.jsonl")
    e.set_defaults(func=_eval)

    b = tsub.add_parser("baseline", help="score a student dir (the shipped one) on the held-out set, into the ledger")
    b.add_argument("--heldout", required=True)
    b.add_argument("--student", default="models/default-student")
    b.add_argument("--eval-max", type=int, default=300)
    b.add_argument("--state", default="models/program")
    b.add_argument("--ledger", default="models/ledger.jsonl")
    b.set_defaults(func=_baseline)

    c = tsub.add_parser("compare", help="the latest held-out scores against the baseline's, with bootstrap intervals")
    c.add_argument("--candidate", default="models/program/heldout_scores.json")
    c.add_argument("--baseline", default="models/program/baseline_scores.json")
    c.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (default 2000)")
    c.add_argument("--out", help="write the comparison as JSON here (promotion records it in the manifest)")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(func=_compare)

    n = tsub.add_parser("ensemble", help="score a snapshot ensemble (+ mirrored tiles) on the held-out set: "
                        "the stand-in teacher's candidate")
    n.add_argument("--members", nargs="+", required=True,
                   help="student dirs and/or snapshot .safetensors (e.g. models/default-student "
                        "models/program/snapshots/*.safetensors)")
    n.add_argument("--no-flip", action="store_true", help="do not also run each tile mirrored left to right")
    n.add_argument("--config", help="student dir whose config.json the snapshots share (default: "
                   "the snapshots folder's ../student)")
    n.add_argument("--heldout", required=True)
    n.add_argument("--eval-max", type=int, default=300)
    n.add_argument("--out", required=True, help="held-out scores JSON (`train compare --candidate` reads it)")
    n.set_defaults(func=_ensemble)

    s = tsub.add_parser("score", help="score any student dir on the held-out set into a score file (a chain stage)")
    s.add_argument("--student", required=True, help="student dir (config.json + model.safetensors)")
    s.add_argument("--heldout", required=True)
    s.add_argument("--eval-max", type=int, default=300)
    s.add_argument("--pixel-threshold", type=float, default=0.5,
                   help="cut the soft mask here for pixel F1 (a package's calibrated pixel_threshold; default 0.5)")
    s.add_argument("--tile", type=int, help="tile size to score at (default: the student's; the student is fully "
                   "convolutional, so every stage of a chain can be scored at the shipped package's tile)")
    s.add_argument("--out", required=True, help="held-out scores JSON (what `train compare` and `train chain` read)")
    s.set_defaults(func=_score)

    ch = tsub.add_parser("chain", help="the retention chain: teacher -> distilled/pruned student -> INT8, "
                         "per domain, with bootstrap intervals")
    ch.add_argument("--stage", action="append", required=True, metavar="NAME=SCORES[,model=DIR][,ms=X][,note=T]",
                    help="a stage's held-out score file (from `train score`, `train ensemble` or `eval --scores-out`), "
                         "optionally its student dir (params, GMAC per tile) and ms per 1024² image; the teacher first")
    ch.add_argument("--machine", help="the machine the ms figures were measured on")
    ch.add_argument("--reps", type=int, default=2000)
    ch.add_argument("--out", help="chain JSON")
    ch.add_argument("--markdown", help="chain tables (markdown)")
    ch.add_argument("--plot", help="PNG: latency against held-out AUC and pixel F1, one point per stage with an ms figure")
    ch.set_defaults(func=_chain)

    q = tsub.add_parser("plot", help="the learning curve (held-out AUC and training loss against CPU hours)")
    q.add_argument("--ledger", default="models/ledger.jsonl")
    q.add_argument("--out", required=True, help="PNG path")
    q.set_defaults(func=_plot)


def _run(args: argparse.Namespace) -> int:
    from .cli import _weights
    from .program import ProgramConfig, train_session

    cfg = ProgramConfig(data=args.data, heldout=args.heldout, state=args.state, ledger=args.ledger, work=args.work,
                        init=args.init, minutes=args.minutes, ckpt_minutes=args.ckpt_minutes,
                        eval_minutes=args.eval_minutes, eval_max=args.eval_max, lr=args.lr, batch=args.batch,
                        crop=args.crop, seed=args.seed, bf16=args.bf16, threads=args.threads, workers=args.workers,
                        weights=_weights(args.w, 2.0))
    res = train_session(cfg)
    last = res.lines[-1] if res.lines else {}
    print(f"session done: step {last.get('step')}, {last.get('cpu_hours')} CPU hours in all; "
          f"state {res.state}, ledger {res.ledger}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .program import eval_state

    line = eval_state(args.state, args.heldout, args.eval_max, args.ledger)
    print(json.dumps(line["heldout"]))
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from .program import baseline_line

    line = baseline_line(args.student, args.heldout, args.eval_max, args.ledger, args.state)
    print(json.dumps(line["heldout"]))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .promotion import compare, format_table

    res = compare(args.candidate, args.baseline, reps=args.reps)
    if args.out:
        from ..artifacts import write_json

        write_json(args.out, res)
    print(json.dumps(res) if args.json else format_table(res))
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    import hashlib

    from ..artifacts import write_json
    from ..data import load_dataset
    from .ensemble import build_ensemble
    from .program import heldout_scores, summary_line

    ens = build_ensemble(args.members, flip=not args.no_flip, config_dir=args.config)
    held = load_dataset(args.heldout)[: args.eval_max or None]
    scores = heldout_scores(ens, held, ens.cfg.tile)
    ident = hashlib.sha256("\n".join(sorted(args.members) + [str(not args.no_flip)]).encode()).hexdigest()
    write_json(args.out, {"step": None, "weights_sha256": f"ensemble-{ident[:16]}", "heldout": args.heldout,
                          "members": args.members, "flip": not args.no_flip, "images": scores})
    print(json.dumps(summary_line(scores)))
    return 0


def _score(args: argparse.Namespace) -> int:
    from ..artifacts import sha256_file, write_json
    from ..data import load_dataset
    from ..errors import DefakerError
    from ..student.io import load_student
    from .program import heldout_scores, summary_line

    if not 0.0 < args.pixel_threshold < 1.0:
        raise DefakerError(f"--pixel-threshold must be in (0, 1), got {args.pixel_threshold}")
    model, cfg = load_student(args.student)
    tile = args.tile or cfg.tile
    if tile % 32 or tile < 64:
        raise DefakerError(f"--tile must be a multiple of 32 and at least 64, got {tile}")
    held = load_dataset(args.heldout)[: args.eval_max or None]
    scores = heldout_scores(model, held, tile, cut=args.pixel_threshold)
    write_json(args.out, {"step": None, "student": args.student, "pixel_cut": args.pixel_threshold, "tile": tile,
                          "weights_sha256": sha256_file(Path(args.student) / "model.safetensors"),
                          "heldout": args.heldout, "images": scores})
    print(json.dumps(summary_line(scores)))
    return 0


def _chain(args: argparse.Namespace) -> int:
    from .chain import ChainConfig, chain_report, parse_stage

    res = chain_report(ChainConfig([parse_stage(s) for s in args.stage], out=args.out, markdown=args.markdown,
                                   reps=args.reps, machine=args.machine))
    if args.plot:
        from ..bench.plots import chain_plot

        chain_plot(res.report, args.plot)
    print(res.markdown, end="")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .promotion import plot_ledger

    print(plot_ledger(args.ledger, args.out), file=sys.stderr)
    return 0
