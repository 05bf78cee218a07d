"""Score full images the way the runtime does, for the accuracy gate and threshold calibration.

Every image is cut into native-resolution tiles (runtime.tiling), run in batches, the tiles'
fake logits are aggregated with `aggregate_logits` (max) and the mask logits are upsampled,
blended with `blend_window` and stitched back to the image's size. ONNX files run through the
runtime's own ONNX Runtime backend on the CPU provider, so what the gate measures is what ships.
Metrics come from defaker_edge.metrics only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

# (uint8 tiles [N, T, T, 3], their luma tables [N, 64] or None) -> (fake_logit [N], mask_logits
# [N, 1, T/4, T/4]); the runner prepares the model's inputs itself, since the CPU INT8 model takes
# raw pixels (runtime.tiling.RAW_S2D) and a compression-history model the DCT stream too
RunFn = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass
class ImagePred:
    key: str
    label: int
    domain: str
    logit: float  # aggregated image logit
    pixel: dict[str, float] | None  # pixel_scores() for fakes with a mask
    # [2, 256] mask-level counts over untouched / edited pixels (calibration.pixel), when asked for
    hist: np.ndarray | None = None
    # the tiles' logits [N] before aggregation (the band's per-tile re-run is fitted on them)
    tile_logits: np.ndarray | None = None


def onnx_runner(path: str | os.PathLike, tile: int, threads: int | None = None) -> RunFn:
    """An ORT CPU session on `path`, as a batch function (the runtime's backend class)."""
    from ..runtime.backends.onnxruntime import OrtBackend

    be = OrtBackend(path, precision="?", tile=tile, providers=["CPUExecutionProvider"], threads=threads)
    return be.run_tiles


def torch_runner(model) -> RunFn:
    import torch

    from ..runtime.tiling import normalize

    from ..runtime.tiling import extra_inputs
    from ..student.inputs import dct_spec

    model.eval()
    dct = dct_spec(model)

    def run(tiles: np.ndarray, tables: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        more = [torch.from_numpy(v) for v in extra_inputs(tiles, tables, dct).values()]
        with torch.inference_mode():
            f, m = model(torch.from_numpy(normalize(tiles)), *more)
        return f.float().reshape(-1).numpy(), m.float().numpy()

    return run


def onnx_tile(path: str | os.PathLike) -> int:
    """The static tile size of an ONNX file's input ([N, 3, T, T], or its raw-pixel format's shape)."""
    import onnx

    from ..runtime.tiling import model_format, tile_of

    m = onnx.load(str(path), load_external_data=False)
    dims = next(i for i in m.graph.input if i.name not in ("dct", "qtable")).type.tensor_type.shape.dim
    return tile_of(model_format(m), [d.dim_value for d in dims])


def stitch(mask_logits: np.ndarray, origins: Sequence[tuple[int, int]], h: int, w: int, tile: int,
           overlap: int) -> np.ndarray:
    """Tile mask logits [N,1,t,t] (t = T/4) -> probabilities float32 [h, w].

    Logits are upsampled bilinearly to T, blended with the runtime's window (weights ramp over the
    overlap) and averaged where tiles overlap; the sigmoid comes last so blending is in logit space.
    """
    import cv2

    from ..runtime.tiling import blend_window

    H, W = max(h, tile), max(w, tile)
    acc = np.zeros((H, W), np.float32)
    wsum = np.zeros((H, W), np.float32)
    win = blend_window(tile, overlap)
    for (y, x), ml in zip(origins, mask_logits[:, 0]):
        up = cv2.resize(ml.astype(np.float32), (tile, tile), interpolation=cv2.INTER_LINEAR)
        acc[y:y + tile, x:x + tile] += up * win
        wsum[y:y + tile, x:x + tile] += win
    logit = acc[:h, :w] / np.maximum(wsum[:h, :w], 1e-6)
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def predict_images(run: RunFn, samples: Sequence, tile: int, *, overlap: int | None = None, batch: int = 8,
                   masks: bool = True, desc: str = "evaluate", hists: bool = False) -> list[ImagePred]:
    """Run `run` over every sample's tiles; aggregated logit and pixel scores per image.
    `overlap`: None is the package default, min(64, tile // 4). `hists`: also each image's mask-level
    histograms (fakes with a mask and authentic images), for fitting the pixel threshold."""
    from ..calibration.pixel import level_histograms
    from tqdm import tqdm

    from ..data.io import load_dataset_image, load_mask
    from ..metrics import pixel_scores
    from ..runtime.dct import read_qtable, tile_tables
    from ..runtime.tiling import TileSpec, aggregate_logits, cut_tiles, tile_origins

    from ..runtime.tiling import default_overlap

    overlap = default_overlap(tile) if overlap is None else overlap
    spec = TileSpec(tile=tile, overlap=overlap)
    out: list[ImagePred] = []
    for s in tqdm(samples, desc=desc, unit="img", leave=False, disable=None):
        img = load_dataset_image(s.image)
        h, w = img.shape[:2]
        origins = tile_origins(h, w, spec)
        tables = tile_tables(read_qtable(s.image), origins)
        logits, mls = [], []
        for a in range(0, len(origins), batch):
            f, m = run(cut_tiles(img, origins[a:a + batch], tile), tables[a:a + batch])
            logits.append(np.asarray(f, np.float32).reshape(-1))
            mls.append(np.asarray(m, np.float32))
        tl = np.concatenate(logits)
        if not np.all(np.isfinite(tl)):
            raise FloatingPointError(f"{s.key or s.image}: the model produced NaN/Inf")
        pix = hist = None
        fake_masked = s.label == 1 and s.mask
        if (masks and fake_masked) or (hists and (fake_masked or s.label == 0)):
            prob = stitch(np.concatenate(mls), origins, h, w, tile, overlap)
            gt = load_mask(s.mask, size=(h, w))[0] if fake_masked else None
            pix = pixel_scores(prob, gt) if masks and fake_masked else None
            hist = level_histograms(prob, gt) if hists else None
        out.append(ImagePred(key=s.key or s.image, label=int(s.label), domain=s.domain,
                             logit=aggregate_logits(tl), pixel=pix, hist=hist, tile_logits=tl))
    return out


def metrics_of(preds: Sequence[ImagePred], threshold: float = 0.5) -> dict:
    """The metrics module's summary over predictions (probability = sigmoid of the image logit)."""
    from ..metrics import Record, summarize

    recs = [Record(label=p.label, fake_prob=float(1.0 / (1.0 + np.exp(-p.logit))), domain=p.domain,
                   pixel=p.pixel) for p in preds]
    return summarize(recs, threshold)


def heldout_samples(data: str | os.PathLike, split: str | None = None) -> list:
    """The held-out samples of a dataset: `split` if given (comma-separated to pool several), else val,
    else test (never train)."""
    from ..data.dataset import load_dataset
    from ..errors import DatasetError

    samples = load_dataset(data)
    if split:
        wanted = {x.strip() for x in split.split(",")}  # "val,test" pools both
        sel = [s for s in samples if s.split in wanted]
        if not sel:
            raise DatasetError(f"{data}: no samples in split {split!r}")
        return sel
    for sp in ("val", "test"):
        sel = [s for s in samples if s.split == sp]
        if sel:
            return sel
    if all(s.split is None for s in samples):
        log.warning("%s has no splits; evaluating on every sample", data)
        return samples
    raise DatasetError(f"{data}: no held-out split (val or test); pass --split")


def model_path_kind(path: str | os.PathLike) -> str:
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":
        return "onnx"
    if p.is_dir() and (p / "config.json").is_file():
        return "student"
    if p.is_dir() and (p / "model.onnx").is_file():
        return "onnx-dir"
    from ..errors import ArtifactError

    raise ArtifactError(f"{p}: not a student dir (config.json + model.safetensors) or an .onnx file")
