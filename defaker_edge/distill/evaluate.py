"""Held-out metrics for a student and its teacher, at full image resolution.

The student runs as the runtime will: native-resolution tiles (runtime.tiling), image logit =
aggregate_logits over tiles, mask logits upsampled to the tile and blended over overlaps. The
teacher is scored from its own full-image targets. Both go through defaker_edge.metrics.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import Sample, load_dataset_image, load_mask
from ..metrics import Record, pixel_scores, summarize
from ..runtime.dct import NO_TABLE, dct_stream, read_qtable, tile_tables
from ..student.inputs import dct_spec, run
from ..runtime.tiling import TileSpec, aggregate_logits, blend_window, cut_tiles, normalize, tile_origins
from ..errors import ArtifactError
from .targets import TargetSource, soft_mask_to_image

log = logging.getLogger(__name__)


@torch.no_grad()
def tile_outputs(model: torch.nn.Module, img: np.ndarray, tile: int, overlap: int = 64, batch: int = 8,
                 qtable: np.ndarray | None = None) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """The runtime's tiling of one uint8 image run through a student: (tile origins, tile logits [N],
    mask logits [N, T/4, T/4] at the model's quarter resolution). `qtable` is the file's luma table
    (runtime.dct.read_qtable), read by students with a compression-history stream."""
    h, w = img.shape[:2]
    origins = tile_origins(h, w, TileSpec(tile=tile, overlap=overlap))
    tiles = cut_tiles(img, origins, tile)
    logits, masks = [], []
    dev = next(model.parameters()).device
    spec_dct = dct_spec(model)
    tables = tile_tables(NO_TABLE if qtable is None else qtable, origins)
    for i in range(0, len(tiles), batch):
        extra = None
        if spec_dct is not None:
            t = tiles[i:i + batch]
            extra = {"dct": torch.from_numpy(dct_stream(t, tables[i:i + batch], *spec_dct)),
                     "qtable": torch.from_numpy(tables[i:i + batch])}
        lg, mk = run(model, torch.from_numpy(normalize(tiles[i:i + batch])).to(dev), extra)
        logits.append(lg.float().cpu())
        masks.append(mk.float()[:, 0].cpu())
    return origins, torch.cat(logits).numpy(), torch.cat(masks).numpy()


def predict_image(model: torch.nn.Module, img: np.ndarray, tile: int, overlap: int = 64,
                  batch: int = 8, qtable: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(fake probability, mask probabilities [H, W]) for one uint8 image (see tile_outputs): the
    tiles' maximum logit, and their masks upsampled and blended over the overlaps as the runtime does."""
    h, w = img.shape[:2]
    origins, logits_np, masks_q = tile_outputs(model, img, tile, overlap, batch, qtable)
    masks_np = F.interpolate(torch.from_numpy(masks_q)[:, None], size=(tile, tile), mode="bilinear",
                             align_corners=False)[:, 0].numpy()
    win = blend_window(tile, min(overlap, tile // 2))
    acc = np.zeros((max(h, tile), max(w, tile)), np.float32)
    wsum = np.zeros_like(acc)
    for (y, x), m in zip(origins, masks_np):
        acc[y:y + tile, x:x + tile] += m * win
        wsum[y:y + tile, x:x + tile] += win
    mlog = (acc / np.maximum(wsum, 1e-6))[:h, :w]
    prob = 1.0 / (1.0 + math.exp(-aggregate_logits(logits_np)))
    return prob, 1.0 / (1.0 + np.exp(-np.clip(mlog, -30, 30)))


def _gt(s: Sample, shape: tuple[int, int]) -> np.ndarray | None:
    if s.label != 1:
        return None
    if s.mask:
        return load_mask(s.mask, size=tuple(shape))[0]
    return None


def evaluate(model: torch.nn.Module | None, samples: list[Sample], tile: int,
             teacher: TargetSource | None = None, desc: str = "eval") -> dict:
    """{"student": summary overall, "teacher": ..., "n": N}; either side may be absent."""
    if model is not None:
        model.eval()
    srec: list[Record] = []
    trec: list[Record] | None = [] if teacher is not None else None
    for s in tqdm(samples, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        img = load_dataset_image(s.image)
        gt = _gt(s, img.shape[:2])
        if model is not None:
            q = read_qtable(s.image) if dct_spec(model) is not None else None
            p, m = predict_image(model, img, tile, qtable=q)
            srec.append(Record(s.label, p, s.domain, pixel_scores(m, gt) if gt is not None else None))
        if trec is not None:
            try:
                t = teacher(s.key, img)
            except ArtifactError as e:  # e.g. a cache made over the train split only
                log.warning("teacher metrics left out: %s", e)
                trec = None
                continue
            tm = soft_mask_to_image(t.soft_mask, *img.shape[:2])
            trec.append(Record(s.label, t.fake_prob, s.domain, pixel_scores(tm, gt) if gt is not None else None))
    out: dict[str, Any] = {"n": len(samples)}
    if srec:
        out["student"] = summarize(srec)
    if trec:
        out["teacher"] = summarize(trec)
    if srec and trec:
        out["retention"] = retention(out["student"], out["teacher"])
    return out


def retention(student: dict, teacher: dict) -> dict[str, float]:
    """Student metric / teacher metric for image_auc and pixel_f1 (NaN where undefined)."""
    ret = {}
    for k in ("image_auc", "pixel_f1"):
        sv, tv = student["overall"][k], teacher["overall"][k]
        ok = tv is not None and sv is not None and not math.isnan(tv) and not math.isnan(sv) and tv != 0
        ret[k] = sv / tv if ok else float("nan")
    return ret


def headline(val: dict | None) -> dict[str, Any]:
    """{"student": {image_auc, pixel_f1, balanced_acc}, "teacher": {...}, "retention": {...}} for reports."""
    out: dict[str, Any] = {}
    if not val:
        return out
    for who in ("student", "teacher"):
        if who in val and val[who]:
            o = val[who]["overall"]
            out[who] = {k: o.get(k) for k in ("image_auc", "pixel_f1", "balanced_acc", "n")}
    if "retention" in val:
        out["retention"] = val["retention"]
    if "split" in val:
        out["split"] = val["split"]
    return out
