"""`defaker teacher info|train|predict|cache` (standard library only at module level)."""

from __future__ import annotations

import json
import sys

TEACHER_HELP = "a checkpoint directory or a preset: tiny (random), reference (models/reference-teacher), defakerone-2b"


def register(sub) -> None:
    p = sub.add_parser("teacher", help="the DeFakerOne teacher (InternVL + SAM2): info, train, predict, cache",
                       description="The DeFakerOne teacher: InternVL dynamic tiling + LLM yes/no answer for "
                                   "detection, [SEG] -> SAM2 mask decoder for localization.")
    tsub = p.add_subparsers(dest="teacher_command", metavar="SUBCOMMAND")

    i = tsub.add_parser("info", help="parameters per module (built on the meta device: no memory, no weights)")
    i.add_argument("--preset", default="defakerone-2b", help="tiny | reference | defakerone-2b (default)")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    i.add_argument("--time", action="store_true",
                   help="also build random weights on --device and time predict on a 600x800 image")
    i.add_argument("--device", default="cpu", help="device for --time (e.g. cuda)")
    i.add_argument("--dtype", default=None, help="dtype for --time (default bfloat16 on cuda, float32 on cpu)")
    i.set_defaults(func=_info)

    t = tsub.add_parser("train", help="train the reference teacher on (synthetic) forgeries",
                        description="Trains the whole teacher: CE on the yes/no answer token, BCE + Dice on the "
                                    "mask. Uses the manifest's train split to train and its test split for "
                                    "metrics.json (image AUC, pixel F1).",
                        epilog="example: defaker teacher train --preset reference --data data/synth/manifest.jsonl "
                               "--out models/reference-teacher --time-budget-min 40")
    t.add_argument("--preset", default="reference")
    t.add_argument("--data", required=True, help="manifest.jsonl (or its directory) with train/test splits")
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: until the time budget)")
    t.add_argument("--time-budget-min", type=float, default=40.0, help="stop training after this many minutes")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    t.add_argument("--eval-split", default="test", help="split used for metrics.json (default test)")
    t.add_argument("--max-eval", type=int, default=None, help="evaluate at most this many images")
    t.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    t.set_defaults(func=_train)

    pr = tsub.add_parser("predict", help="fake probability and mask for one image")
    pr.add_argument("image")
    pr.add_argument("--teacher", default="tiny", help=TEACHER_HELP)
    pr.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pr.add_argument("--mask-out", default=None, help="write the mask (0/255 PNG, the image's size) here")
    pr.add_argument("--questions", choices=("first", "all"), default=None,
                    help="use the first detection question, or average all ten (default: the checkpoint's)")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=_predict)

    c = tsub.add_parser("cache", help="write teacher targets (fake_prob, soft mask /4) for distillation",
                        description="Resumable and shardable: re-run the same command after an interruption and "
                                    "only missing chunks are computed. Shard with --shard i/n, or run under "
                                    "torchrun (RANK/WORLD_SIZE).")
    c.add_argument("--teacher", required=True, help=TEACHER_HELP)
    c.add_argument("--data", required=True, help="manifest.jsonl, its directory, or an image folder")
    c.add_argument("--out", required=True)
    c.add_argument("--split", default=None, help="only this split of the manifest")
    c.add_argument("--shard", default=None, help="i/n: this process computes samples i, i+n, ...")
    c.add_argument("--tiles", type=int, default=None, help="also cache per-tile targets on T x T native tiles")
    c.add_argument("--features", action="store_true", help="also store the SAM2 image embedding (fp16)")
    c.add_argument("--chunk", type=int, default=32, help="images per chunk file")
    c.add_argument("--device", default="cpu")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cache)

    p.set_defaults(func=lambda a: (p.print_help(sys.stderr), 2)[1])


def _info(args) -> int:
    from .info import info

    res = info(args.preset)
    if args.time:
        from .info import time_predict

        dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
        res["timing"] = time_predict(args.preset, args.device, dtype=dtype)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res["params"].items():
            print(f"{k:28s} {v:>15,d}")
        print(f"{'total_params':28s} {res['total_params']:>15,d}")
        if "timing" in res:
            t = res["timing"]
            print(f"predict {t['image'][0]}x{t['image'][1]} on {t['device']} ({t['dtype']}): p50 {t['ms_p50']:.1f} ms")
    return 0


def _predict(args) -> int:
    import numpy as np

    from ..data.io import load_image
    from . import load_teacher

    img = load_image(args.image)
    teacher = load_teacher(args.teacher, device=args.device)
    out = teacher.predict(img, question_mode=args.questions)
    prob = (1.0 / (1.0 + np.exp(-out.mask_logits.numpy().astype(np.float64))))
    res = {"image": args.image, "fake_prob": out.fake_prob, "mask_mean": float(prob.mean()),
           "height": int(img.shape[0]), "width": int(img.shape[1])}
    if args.mask_out:
        from PIL import Image

        Image.fromarray(((prob > 0.5) * 255).astype(np.uint8)).save(args.mask_out)
        res["mask"] = args.mask_out
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.image}: fake_prob {out.fake_prob:.4f}" + (f", mask -> {args.mask_out}" if args.mask_out else ""))
    return 0


def _cache(args) -> int:
    from ..data import load_dataset
    from . import load_teacher
    from .cache import CacheConfig, cache_inputs_id, shard_from_env, write_cache

    shard, n = shard_from_env(args.shard)
    samples = load_dataset(args.data, split=args.split)
    teacher = load_teacher(args.teacher, device=args.device)
    cfg = CacheConfig(out=args.out, tiles=args.tiles, features=args.features, chunk=args.chunk,
                      shard=shard, num_shards=n)
    c = write_cache(teacher, samples, cfg, teacher_id=str(args.teacher), data_id=cache_inputs_id(args.data))
    res = {"out": args.out, "shard": f"{shard}/{n}", "entries_total": len(c)}
    print(json.dumps(res) if args.json else f"cache {args.out}: {len(c)} entries (shard {shard}/{n} done)")
    return 0


def _train(args) -> int:
    from .train import TrainConfig, train_teacher

    cfg = TrainConfig(preset=args.preset, data=args.data, out=args.out, steps=args.steps,
                      time_budget_min=args.time_budget_min, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, threads=args.threads, eval_split=args.eval_split, max_eval=args.max_eval,
                      command=" ".join(["defaker", *sys.argv[1:]]))
    res = train_teacher(cfg)
    if args.json:
        print(json.dumps(res.metrics))
    else:
        m = res.metrics
        print(f"teacher -> {args.out}: image_auc {m.get('image_auc')}, pixel_f1 {m.get('pixel_f1')} "
              f"({res.steps} steps, {res.minutes:.1f} min)")
    return 0
