"""Training tiles: native-resolution crops on the 8x8 JPEG grid, with their labels and teacher targets.

Every random choice is drawn from a generator seeded by (seed, step, index in the global batch), so
a batch is the same whatever the number of DDP ranks and however often training was resumed.
The crop itself is never resized (forgery traces live in the pixels); the whole image sometimes
is, before cropping, so the student also sees resampled content (DESIGN §5, §8 robustness).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..data import Sample, load_dataset_image, load_mask
from ..runtime.dct import NO_TABLE, dct_stream, read_qtable
from ..runtime.tiling import GRID, MEAN, normalize
from .targets import ImageTargets, TargetSource


@dataclass
class AugConfig:
    p_resize: float = 0.15  # resize the whole image before cropping, by a factor in resize_range
    resize_range: tuple[float, float] = (0.6, 1.4)
    p_flip: float = 0.5
    p_jpeg: float = 0.3  # re-compress the crop at a quality in jpeg_range
    jpeg_range: tuple[int, int] = (60, 100)
    p_noise: float = 0.15
    noise_sigma: float = 3.0
    p_blur: float = 0.1
    p_sharpen: float = 0.05  # hard negatives: an unsharp mask (a phone's or an editor's global sharpening)
    # drop the file's table for this share of crops that have one (the pixels stay): the stream must
    # not lean on the table alone (a held-out run once scored higher with every table zeroed)
    p_drop_table: float = 0.2
    p_focus: float = 0.5  # for fakes with a mask: place the crop over manipulated pixels
    min_fake_px: int = 32  # a tile is fake when it holds at least this many manipulated pixels


class ImageStore:
    """Decoded images, masks and teacher targets, kept under a memory budget (an LRU by bytes).

    Why a byte budget: decoding a PNG costs as much as a training step's share of compute, so the
    whole train split should stay decoded when it fits (1,280 synthetic images are ~1.5 GB), while
    a large dataset must not grow the process without bound.
    """

    def __init__(self, samples: list[Sample], targets: TargetSource | None, budget_mb: int = 6144):
        self.samples = samples
        self.targets = targets
        self.budget = budget_mb << 20
        self.used = 0
        self._lru: OrderedDict[int, tuple] = OrderedDict()
        self._q: dict[int, np.ndarray] = {}  # 256 bytes an image: kept for all

    def qtable(self, i: int) -> np.ndarray:
        if i not in self._q:
            self._q[i] = read_qtable(self.samples[i].image)
        return self._q[i]

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None, ImageTargets | None]:
        """(pixels, ground-truth mask, teacher targets) of sample i; its table is `qtable(i)`."""
        if i in self._lru:
            self._lru.move_to_end(i)
            return self._lru[i][0]
        s = self.samples[i]
        img = load_dataset_image(s.image)
        gt = None
        if s.mask:
            gt, _ = load_mask(s.mask, size=img.shape[:2])
        elif s.label == 1 and s.domain == "aigc":
            gt = np.ones(img.shape[:2], bool)  # every pixel of a generated image is generated
        elif s.label == 0:
            gt = np.zeros(img.shape[:2], bool)
        tgt = self.targets(s.key, img) if self.targets is not None else None
        item = (img, gt, tgt)
        size = img.nbytes + (gt.nbytes if gt is not None else 0)
        self._lru[i] = (item, size)
        self.used += size
        while self.used > self.budget and len(self._lru) > 1:
            self.used -= self._lru.popitem(last=False)[1][1]
        return item


def _pool4(m: np.ndarray) -> np.ndarray:
    h, w = m.shape
    return m.reshape(h // 4, 4, w // 4, 4).mean((1, 3))


class TileSampler:
    """`dct`: (frequencies, clip) of the student's compression-history stream, or None. With it,
    each item also carries the stream's input for its crop and the table that goes with it: the
    file's, unless an augmentation changed the pixels after decoding (a resize, blur or noise make it a
    file without a table; a re-compression gives that quality's table), as a device would see it."""

    def __init__(self, store: ImageStore, crop: int, seed: int, aug: AugConfig | None = None,
                 dct: tuple[int, int] | None = None):
        if crop % GRID:
            raise ValueError(f"crop must be a multiple of {GRID}")
        self.store, self.crop, self.seed, self.aug = store, crop, seed, aug or AugConfig()
        self.dct = dct

    def batch(self, step: int, start: int, count: int) -> dict[str, torch.Tensor]:
        """Items start..start+count-1 of the global batch for `step` (a DDP rank's share)."""
        items = [self.item(step, j) for j in range(start, start + count)]
        out = {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0] if k != "x"}
        out["x"] = torch.from_numpy(normalize(np.stack([it["x"] for it in items])))
        return out

    def item(self, step: int, j: int) -> dict[str, np.ndarray]:
        a, c = self.aug, self.crop
        rng = np.random.default_rng([self.seed, step, j])
        i = int(rng.integers(len(self.store.samples)))
        s = self.store.samples[i]
        img, gt, tgt = self.store.get(i)
        soft = None if tgt is None else tgt.soft_mask.astype(np.float32)
        h0, w0 = img.shape[:2]
        q = self.store.qtable(i) if self.dct is not None else NO_TABLE
        if rng.random() < a.p_resize:
            q = NO_TABLE
            f = rng.uniform(*a.resize_range)
            nh, nw = max(8, int(round(h0 * f))), max(8, int(round(w0 * f)))
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
            if gt is not None:
                gt = cv2.resize(gt.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
            if soft is not None:
                soft = cv2.resize(soft, (-(-nw // 4), -(-nh // 4)), interpolation=cv2.INTER_LINEAR)
        h, w = img.shape[:2]
        y0, x0 = self._origin(rng, h, w, gt if s.label == 1 else None)
        # pad with the mean colour (as runtime.tiling.cut_tiles) when the image is smaller than the crop
        x = np.empty((c, c, 3), np.uint8)
        x[:] = np.rint(np.asarray(MEAN) * 255).astype(np.uint8)
        part = img[y0:y0 + c, x0:x0 + c]
        x[:part.shape[0], :part.shape[1]] = part
        g = np.zeros((c, c), np.float32)
        if gt is not None:
            gp = gt[y0:y0 + c, x0:x0 + c]
            g[:gp.shape[0], :gp.shape[1]] = gp
        t = np.zeros((c // 4, c // 4), np.float32)
        if soft is not None:
            sp = soft[y0 // 4:(y0 + c) // 4, x0 // 4:(x0 + c) // 4]
            t[:sp.shape[0], :sp.shape[1]] = sp
        if rng.random() < a.p_flip:
            x, g, t = x[:, ::-1], g[:, ::-1], t[:, ::-1]
        if rng.random() < a.p_flip:
            x, g, t = x[::-1], g[::-1], t[::-1]
        x, q = self._photometric(np.ascontiguousarray(x), rng, q)
        if self.dct is not None and q.any() and rng.random() < a.p_drop_table:
            q = NO_TABLE
        covers = part.shape[0] * part.shape[1] >= 0.9 * h * w
        if gt is not None:
            label, lw = float(g.sum() >= min(a.min_fake_px, max(1, gt.sum()))), 1.0
            if s.label == 1 and s.domain == "aigc":
                label = 1.0
        else:  # a fake without a mask: the tile's label is known only if it shows (nearly) all of it
            label, lw = float(s.label), float(covers)
        out = {"x": x, "gt_label": np.float32(label), "gt_label_w": np.float32(lw),
               "gt_mask": _pool4(g)[None].astype(np.float32), "gt_mask_w": np.float32(gt is not None),
               "t_prob": np.float32(0.5), "t_mask": t[None].copy(), "t_w": np.float32(tgt is not None)}
        if self.dct is not None:
            out["dct"] = dct_stream(x[None], q[None], *self.dct)[0]
            out["qtable"] = q.astype(np.float32)
        if tgt is not None:
            # the teacher's image answer holds for this tile only where its mask says the tile is touched
            p = tgt.fake_prob if covers else min(tgt.fake_prob, float(t.max()) if t.size else 0.0)
            out["t_prob"] = np.float32(p)
            if tgt.features is not None:
                out["t_feat"] = tgt.features.astype(np.float32)
        return out

    def _origin(self, rng: np.random.Generator, h: int, w: int, gt: np.ndarray | None) -> tuple[int, int]:
        c = self.crop
        ymax, xmax = max(0, (h - c) // GRID), max(0, (w - c) // GRID)
        if gt is not None and gt.any() and rng.random() < self.aug.p_focus:
            ys, xs = np.nonzero(gt)
            k = int(rng.integers(len(ys)))
            # a grid-aligned origin that puts that manipulated pixel inside the crop
            lo_y, lo_x = max(0, -(-(ys[k] - c + 1) // GRID)), max(0, -(-(xs[k] - c + 1) // GRID))
            return (GRID * int(rng.integers(min(lo_y, ymax), min(ys[k] // GRID, ymax) + 1)),
                    GRID * int(rng.integers(min(lo_x, xmax), min(xs[k] // GRID, xmax) + 1)))
        return GRID * int(rng.integers(ymax + 1)), GRID * int(rng.integers(xmax + 1))

    def _photometric(self, x: np.ndarray, rng: np.random.Generator,
                     table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels after the crop's augmentations, and the quantization table a file of them would carry."""
        a = self.aug
        if rng.random() < a.p_blur:
            x = cv2.GaussianBlur(x, (3, 3), 0)
            table = NO_TABLE
        if rng.random() < a.p_sharpen:
            # global post-processing on every image, authentic ones included: never evidence of an edit
            amount = float(rng.uniform(0.3, 1.0))
            soft = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.8, 2.0)))
            x = cv2.addWeighted(x, 1.0 + amount, soft, -amount, 0)  # saturates to uint8
            table = NO_TABLE
        if rng.random() < a.p_noise:
            n = rng.normal(0, rng.uniform(0.5, a.noise_sigma), x.shape)
            x = np.clip(x.astype(np.float32) + n, 0, 255).astype(np.uint8)
            table = NO_TABLE
        if rng.random() < a.p_jpeg:
            # a re-save of the crop (on its own grid, which is the image's: crops start on it)
            q = int(rng.integers(a.jpeg_range[0], a.jpeg_range[1] + 1))
            ok, buf = cv2.imencode(".jpg", x[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
            if ok:
                x = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
                if self.dct is not None:
                    table = read_qtable(buf.tobytes())
        return np.ascontiguousarray(x), table
