"""Training the whole teacher (reference preset) on forgeries, then measuring it on a held-out split.

Loss = λ_txt · CE(first answer token: "Yes" for fake, "No" for real; full-vocabulary softmax)
     + λ_seg · min over SAM2's three masks of (BCE + Dice) against the ground-truth mask at the
       decoder's resolution (all zeros for real images: the [SEG] prompt must then give an empty mask)
     + MSE of SAM2's predicted IoU against each mask's actual IoU (so "keep the best predicted IoU"
       at inference picks a good mask; SAM's own recipe).
Every step samples one of the ten questions per image. Images are decoded, tiled (InternVL dynamic
tiling, the same function inference uses) and resized for SAM2 once, up front, and kept as uint8.
Metrics come from the real inference path (`teacher.predict`) at the original resolution, through
defaker_edge.metrics.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import write_json

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    preset: str = "reference"
    data: str = ""
    out: str = ""
    steps: int | None = None
    time_budget_min: float = 40.0
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    lambda_txt: float = 1.0
    lambda_seg: float = 1.0
    seed: int = 0
    threads: int = 2
    eval_split: str = "test"
    max_eval: int | None = None
    command: str = ""


@dataclass
class TrainResult:
    out: str
    steps: int
    minutes: float
    metrics: dict = field(default_factory=dict)


def _prepare(model, samples, desc: str):
    """Decode once: tiles uint8 [n, S, S, 3], SAM input uint8 [Ss, Ss, 3], mask target float [Ss/4, Ss/4]."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from ..data.io import load_dataset_image, load_mask
    from .tiling import dynamic_tiles, sam_input

    cfg = model.cfg
    s4 = cfg.sam_image_size // 4
    items = []
    for n, s in enumerate(tqdm(samples, desc=desc, unit="img", file=sys.stderr, disable=None)):
        if n % 200 == 0:
            log.info("%s: %d/%d", desc, n, len(samples))
        img = load_dataset_image(s.image)
        if cfg.native_tile:  # keep the full image: crops are drawn per step
            m = load_mask(s.mask)[0] if (s.label and s.mask) else None
            pts = np.argwhere(m) if m is not None and m.any() else None
            if pts is not None and len(pts) > 4000:
                pts = pts[np.random.default_rng(n).choice(len(pts), 4000, replace=False)]
            items.append((img, m, pts, int(s.label)))
            continue
        tiles = dynamic_tiles(img, cfg.force_image_size, cfg.min_dynamic_patch,
                              cfg.max_dynamic_patch if cfg.dynamic_image_size else 1, cfg.use_thumbnail)
        tgt = np.zeros((s4, s4), np.float32)
        if s.label and s.mask:
            m, _ = load_mask(s.mask)
            t = torch.from_numpy(m.astype(np.float32))[None, None]
            tgt = F.interpolate(t, size=(s4, s4), mode="area")[0, 0].numpy()
        items.append((tiles, np.array(sam_input(img, cfg.sam_image_size)), tgt, int(s.label)))
    return items


MIN_FAKE_PIXELS = 64  # a crop with fewer manipulated pixels is labelled real (no visible evidence)


def _native_crop(model, item, rng: random.Random):
    """A random native-resolution T x T crop on the 8-pixel JPEG grid; fakes are centred on the
    manipulated region 70% of the time. -> (tiles, sam input, mask target, label) like _prepare."""
    import torch
    import torch.nn.functional as F

    from ..runtime.tiling import cut_tiles
    from .tiling import dynamic_tiles, sam_input

    img, mask, pts, label = item
    cfg, t = model.cfg, model.cfg.native_tile
    h, w = img.shape[:2]
    if pts is not None and rng.random() < 0.7:
        cy, cx = pts[rng.randrange(len(pts))]
        y0, x0 = int(cy) - rng.randrange(t), int(cx) - rng.randrange(t)
    else:
        y0, x0 = rng.randrange(max(1, h - t + 1)), rng.randrange(max(1, w - t + 1))
    y0 = max(0, min(y0, h - t)) // 8 * 8
    x0 = max(0, min(x0, w - t)) // 8 * 8
    crop = cut_tiles(img, [(y0, x0)], t)[0]
    m = np.zeros((t, t), np.float32)
    if mask is not None:
        part = mask[y0:y0 + t, x0:x0 + t]
        m[:part.shape[0], :part.shape[1]] = part
    lab = int(label and (mask is None or m.sum() >= MIN_FAKE_PIXELS))
    s4 = cfg.sam_image_size // 4
    tgt = F.interpolate(torch.from_numpy(m)[None, None], size=(s4, s4), mode="area")[0, 0].numpy()
    tiles = dynamic_tiles(crop, cfg.force_image_size, cfg.min_dynamic_patch, 1, cfg.use_thumbnail)
    return tiles, np.array(sam_input(crop, cfg.sam_image_size)), tgt, lab


def _batch(model, items, idx, rng: random.Random):
    import torch

    ids, ans_pos, seg_pos, tiles, sams, tgts, labels = [], [], [], [], [], [], []
    yes, no = model.ids.positive[0], model.ids.negative[0]
    for i in idx:
        item = _native_crop(model, items[i], rng) if model.cfg.native_tile else items[i]
        t, sam, tgt, label = item
        p = model.prompt_ids(rng.choice(model.cfg.questions), len(t))
        ans_pos.append(len(p) - 1)
        seg_pos.append(len(p) + 1)
        ids.append(p + [yes if label else no, model.ids.seg])
        tiles.append(torch.from_numpy(t))
        sams.append(torch.from_numpy(sam))
        tgts.append(torch.from_numpy(tgt))
        labels.append(yes if label else no)
    L = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), L), model.ids.pad, dtype=torch.long)
    attn = torch.zeros((len(ids), L), dtype=torch.long)
    for r, x in enumerate(ids):
        input_ids[r, :len(x)] = torch.tensor(x)
        attn[r, :len(x)] = 1
    return (torch.cat(tiles), input_ids, attn, torch.tensor(ans_pos), torch.tensor(seg_pos), torch.stack(sams),
            torch.stack(tgts), torch.tensor(labels))


def seg_losses(masks, iou_pred, target):
    """masks [B, K, h, w] logits, iou_pred [B, K], target [B, h, w] in [0, 1] -> (seg loss, iou loss)."""
    import torch
    import torch.nn.functional as F

    t = target[:, None].expand_as(masks)
    bce = F.binary_cross_entropy_with_logits(masks, t, reduction="none").mean((-2, -1))
    p = torch.sigmoid(masks)
    dice = 1 - (2 * (p * t).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + t.sum((-2, -1)) + 1)
    per = bce + dice  # [B, K]
    seg = per.min(dim=1).values.mean()
    with torch.no_grad():
        hard, tb = (masks > 0).float(), (t > 0.5).float()
        inter, union = (hard * tb).sum((-2, -1)), ((hard + tb) > 0).float().sum((-2, -1))
        actual = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return seg, F.mse_loss(iou_pred.float(), actual)


def evaluate(model, samples, max_eval: int | None = None) -> dict:
    """Image AUC and pixel scores from the inference path, overall and per domain."""
    import torch
    from tqdm import tqdm

    from ..data.io import load_dataset_image, load_mask
    from ..metrics import Record, pixel_scores, summarize

    model.eval()
    recs = []
    for s in tqdm(samples[:max_eval] if max_eval else samples, desc="evaluate", unit="img", file=sys.stderr,
                  disable=None):
        img = load_dataset_image(s.image)
        out = model.predict(img)
        pix = None
        if s.label and s.mask:
            gt, _ = load_mask(s.mask)
            pix = pixel_scores(torch.sigmoid(out.mask_logits).numpy(), gt)
        recs.append(Record(label=s.label, fake_prob=out.fake_prob, domain=s.domain, pixel=pix))
    summ = summarize(recs)
    res = dict(summ["overall"])
    res["per_domain"] = summ["per_domain"]
    res["threshold"] = summ["threshold"]
    return res


def train_teacher(cfg: TrainConfig) -> TrainResult:
    import torch

    from ..data import load_dataset
    from ..errors import DatasetError
    from .config import TeacherConfig
    from .model import build_teacher

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_s = load_dataset(cfg.data, split="train")
    eval_s = load_dataset(cfg.data, split=cfg.eval_split)
    if len({s.label for s in train_s}) < 2:
        raise DatasetError(f"{cfg.data}: the train split needs both real and fake images")
    model = build_teacher(TeacherConfig.from_preset(cfg.preset), seed=cfg.seed)
    items = _prepare(model, train_s, "decode train")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(cfg.seed)
    budget_s = cfg.time_budget_min * 60.0
    total = cfg.steps or 10 ** 9
    t0 = time.time()
    step, ema = 0, None
    model.train()
    order: list[int] = []
    try:  # Ctrl-C / SIGINT ends training early but still evaluates and saves
        while step < total:
            if not order:
                order = list(range(len(items)))
                rng.shuffle(order)
            idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
            tiles, ids, attn, apos, spos, sam, tgt, ans = _batch(model, items, idx, rng)
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(total, 1))))
            for g in opt.param_groups:
                g["lr"] = lr
            logits, masks, iou = model.forward_train(tiles, ids, attn, apos, spos, sam)
            ce = torch.nn.functional.cross_entropy(logits.float(), ans)
            seg, iou_l = seg_losses(masks.float(), iou, tgt)
            loss = cfg.lambda_txt * ce + cfg.lambda_seg * (seg + iou_l)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            acc = float((logits.argmax(-1) == ans).float().mean())
            cur = np.array([loss.item(), ce.item(), seg.item(), acc])
            ema = cur if ema is None else 0.95 * ema + 0.05 * cur
            elapsed = time.time() - t0
            if step == 20 and cfg.steps is None:
                # fix the schedule's length from the measured speed so the cosine ends with the budget
                total = max(step + 1, int(budget_s / (elapsed / step)))
                log.info("%.2f s/step -> %d steps in %.0f min", elapsed / step, total, cfg.time_budget_min)
            if step % 10 == 0 or step == total:
                print(f"step {step}/{total} {elapsed / 60:.1f} min lr {lr:.2e} loss {ema[0]:.4f} ce {ema[1]:.4f} "
                      f"seg {ema[2]:.4f} acc {ema[3]:.3f}", file=sys.stderr, flush=True)
            if cfg.steps is None and elapsed > budget_s:
                break
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: evaluating and saving what was trained", step)
    minutes = (time.time() - t0) / 60.0
    model.eval()
    metrics = evaluate(model, eval_s, cfg.max_eval)
    metrics["split"] = cfg.eval_split
    out = Path(cfg.out)
    extra = {"training": {"preset": cfg.preset, "steps": step, "minutes": round(minutes, 2), "batch_size": cfg.batch_size,
                          "lr": cfg.lr, "seed": cfg.seed, "threads": cfg.threads, "n_train": len(train_s),
                          "data": str(cfg.data), "command": cfg.command}}
    model.save_pretrained(out, dtype=torch.float16, extra=extra)
    write_json(out / "metrics.json", metrics)
    _write_training_md(out, cfg, step, minutes, metrics, len(train_s))
    return TrainResult(out=str(out), steps=step, minutes=minutes, metrics=metrics)


def _write_training_md(out: Path, cfg: TrainConfig, steps: int, minutes: float, m: dict, n_train: int) -> None:
    def f(x):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"

    text = f"""# Reference teacher

Made by:

```
{cfg.command or f"defaker teacher train --preset {cfg.preset} --data {cfg.data} --out {cfg.out}"}
```

Preset `{cfg.preset}` (InternVL vision tower + Llama-shaped LLM + SAM2, random init), trained from scratch on
{n_train} images of the train split for {steps} steps ({minutes:.1f} min, {cfg.threads} CPU threads, batch
{cfg.batch_size}, AdamW lr {cfg.lr}, seed {cfg.seed}). Loss: CE on the yes/no answer token + min-over-masks
BCE + Dice + IoU-head MSE (see defaker_edge/teacher/train.py). Input pre-processing (recorded in config.json):
a fixed SRM-style high-pass residual is concatenated to the normalized RGB of both towers' inputs.

Held-out split `{m.get('split')}` (n = {m.get('n')}), measured through `teacher.predict` at the original resolution:

| image_auc | balanced_acc | pixel_f1 | pixel_f1_best | pixel_iou |
| --- | --- | --- | --- | --- |
| {f(m.get('image_auc'))} | {f(m.get('balanced_acc'))} | {f(m.get('pixel_f1'))} | {f(m.get('pixel_f1_best'))} | {f(m.get('pixel_iou'))} |

Per domain: see metrics.json.
"""
    (out / "TRAINING.md").write_text(text)
