"""Distillation losses: KD on the fake probability, BCE + Dice on masks, optional feature KD, ground truth.

Teachers are imperfect, so ground truth (where a sample has it) is weighted in alongside the teacher.
Every term is averaged over the samples it applies to (a weight vector of 0/1 per sample), so a
batch without, say, any ground-truth mask contributes zero rather than a NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    kd: float = 1.0  # teacher fake probability, softened by `temperature`
    temperature: float = 2.0
    mask_kd: float = 1.0  # BCE on the teacher's soft mask
    dice_kd: float = 0.5  # Dice on the teacher's soft mask
    gt_cls: float = 1.0  # BCE on the tile's ground-truth label
    gt_mask: float = 1.0  # BCE on the ground-truth mask (fraction of manipulated pixels per 4x4 cell)
    gt_dice: float = 0.5
    # a label per 8x8 JPEG block (edited when half its pixels are), class-balanced per image: the
    # pixel BCE above is dominated by untouched pixels (an edit is 0.1-10% of a crop), so its logits
    # stay below 0 inside edits and a mask cut at 0.5 marks nothing; this term pulls them across
    gt_block: float = 0.5
    feat: float = 0.0  # feature KD (needs an online teacher that returns vision_features)


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample 1 - Dice between sigmoid(logits) and a soft target in [0, 1]."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1.0 - (2.0 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)


def bce_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise binary KL(target || sigmoid(logits)) = BCE - H(target): same gradient as BCE, but
    0 at a perfect match, so loss curves on soft teacher targets show progress, not the entropy floor."""
    t = target.clamp(1e-6, 1 - 1e-6)
    ent = -(t * torch.log(t) + (1 - t) * torch.log1p(-t))
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") - ent


def mask_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return bce_kl(logits, target).flatten(1).mean(1)


def block_balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE on 8x8 blocks, edited and untouched blocks weighted half each.

    logits, target: [B, 1, h, w] at the mask's 1/4 resolution (target: fraction edited per 4x4 cell);
    both are averaged over 2x2 cells to the 1/8 block grid (the block student's mask is a bilinear
    upsample of its 1/8 map, so the mean of four cells is that block's logit). A sample without an
    edited block is scored on its untouched blocks alone."""
    lg = F.avg_pool2d(logits, 2)
    pos = (F.avg_pool2d(target, 2) >= 0.5).float()
    bce = F.binary_cross_entropy_with_logits(lg, pos, reduction="none").flatten(1)
    pos = pos.flatten(1)
    n_pos, n_neg = pos.sum(1), (1 - pos).sum(1)
    l_pos = (bce * pos).sum(1) / n_pos.clamp(min=1)
    l_neg = (bce * (1 - pos)).sum(1) / n_neg.clamp(min=1)
    has = (n_pos > 0).float()
    return has * 0.5 * (l_pos + l_neg) + (1 - has) * l_neg


def kd_prob(student_logit: torch.Tensor, teacher_prob: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample binary KD: KL between softened teacher and student, times T^2 (Hinton's scaling)."""
    t_logit = torch.logit(teacher_prob.clamp(1e-4, 1 - 1e-4))
    target = torch.sigmoid(t_logit / temperature)
    return bce_kl(student_logit / temperature, target) * temperature ** 2


def distill_loss(logit: torch.Tensor, mask: torch.Tensor, batch: dict[str, torch.Tensor], w: LossWeights,
                 feat: torch.Tensor | None = None,
                 global_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """logit [B], mask [B,1,h,w] logits; batch from TileSampler. Returns (total, parts as floats).

    Each term is a weighted mean over the samples it applies to. Under DDP, `global_sum` turns this
    rank's weight sums into (sum over ranks) / world, so the ranks' averaged gradients equal the
    gradient of the single-process loss on the whole global batch (not a mean of per-rank means).
    """
    tw, lw, mw = batch["t_w"], batch["gt_label_w"], batch["gt_mask_w"]
    tm, gm = batch["t_mask"], batch["gt_mask"]
    kd_dice_w = tw * (tm.flatten(1).amax(1) >= 0.5).float()  # Dice only where the teacher sees something
    gt_dice_w = mw * (gm.flatten(1).amax(1) > 0).float()
    weights = torch.stack([tw, kd_dice_w, lw, mw, gt_dice_w])  # [5, B]
    denom = weights.sum(1).detach()
    if global_sum is not None:
        denom = global_sum(denom)  # one collective, called on every rank every step
    terms = {
        "kd": (w.kd, kd_prob(logit, batch["t_prob"], w.temperature), 0),
        "mask_kd": (w.mask_kd, mask_bce(mask, tm), 0),
        "dice_kd": (w.dice_kd, soft_dice(mask, tm), 1),
        "gt_cls": (w.gt_cls, F.binary_cross_entropy_with_logits(logit, batch["gt_label"], reduction="none"), 2),
        "gt_mask": (w.gt_mask, mask_bce(mask, gm), 3),
        "gt_dice": (w.gt_dice, soft_dice(mask, gm), 4),
        "gt_block": (w.gt_block, block_balanced_bce(mask, gm), 3),
    }
    parts: dict[str, torch.Tensor] = {}
    for name, (weight, per_sample, row) in terms.items():
        if weight and float(denom[row]) > 0:
            parts[name] = weight * (per_sample * weights[row]).sum() / denom[row]
    if feat is not None and w.feat > 0 and "t_feat" in batch:
        parts["feat"] = w.feat * (1.0 - F.cosine_similarity(feat, batch["t_feat"], dim=1)).mean()
    total = sum(parts.values()) if parts else logit.sum() * 0.0
    return total, {k: float(v.detach()) for k, v in parts.items()}
