"""Forgeries on real photographs that keep their own history (DESIGN §11), and documents saved as
scanners and PDF exporters save them: `defaker data synth --photos DIR`.

Natural images, per image (seeded by (seed, index), as the rest of synth):
  a train-split camera photo, decoded as shipped (its camera JPEG history intact)
  -> sometimes downscaled (which erases that history, as a resized photo's is)
  -> cropped at an arbitrary offset (the camera's 8x8 grid then rarely matches the final save's)
  -> fakes: one local edit (splice from another photo with its own history, copy-move off the grid,
     removal by inpainting or patch fill, local retouch, local recompression, resampling)
  -> a final save as people save (JPEG 60-98 at 4:2:0 or 4:4:4, PNG, WebP), sometimes a second,
     platform-style resize and recompression.
Authentic images take exactly the same crop, resize and save steps, so format, size and quality
say nothing about the label.

Documents: a rendered page, a first save as a scanner or exporter would (JPEG at some quality,
slight blur and noise), then a word- or digit-level edit, then one to three recompressions, the
first quality below or above the final one in equal measure.

Every manifest line names its photo source, its first and final compression and its manipulation.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ...errors import DefakerError
from . import regions as R
from .documents import DOCUMENT_OPS, render_document, scan
from .core import choose_op
from .manipulations import copy_move, inpaint_removal, paste_donor, resample, retouch

RESERVED = ("plasma-workspace-wallpapers", "mate-backgrounds", "lomiri-wallpapers")


class PhotoCorpus:
    """The train-split photos of a `defaker data photos` directory (decoded lazily, a few kept)."""

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        jl = root / "photos.jsonl" if root.is_dir() else root
        if not jl.is_file():
            raise DefakerError(f"{root}: no photos.jsonl (make one with `defaker data photos --out {root}`)")
        lines = [json.loads(s) for s in jl.read_text().splitlines() if s.strip()]
        for ln in lines:
            if any(str(ln.get("package", "")).startswith(r) for r in RESERVED):
                raise DefakerError(f"{jl}: package {ln['package']} is reserved for evaluation and is never trained on")
        self.root = jl.parent
        self.photos = [ln for ln in lines if ln.get("split") == split and ln.get("kind", "photo") == "photo"]
        self.cutouts = [ln for ln in lines if ln.get("split") == split and ln.get("kind") == "cutout"]
        if len(self.photos) < 2:
            raise DefakerError(f"{jl}: needs at least 2 {split}-split photos, found {len(self.photos)}")
        self._cache: dict[str, np.ndarray] = {}

    def load(self, line: dict, mode: str = "RGB") -> np.ndarray:
        key = line["path"] + mode
        if key not in self._cache:
            if len(self._cache) > 24:  # camera originals are large: keep a few decoded
                self._cache.pop(next(iter(self._cache)))
            with Image.open(self.root / line["path"]) as im:
                self._cache[key] = np.asarray(im.convert(mode))
        return self._cache[key]

    def pick(self, rng, exclude: str | None = None) -> dict:
        while True:
            ln = self.photos[int(rng.integers(len(self.photos)))]
            if ln["file"] != exclude:
                return ln


# ---------------------------------------------------------------- encoding, as people save
def encode(img: np.ndarray, fmt: str, q: int = 90, subsampling: int = 2) -> bytes:
    """RGB uint8 -> file bytes. JPEG subsampling 0 = 4:4:4, 2 = 4:2:0 (Pillow's libjpeg)."""
    b = io.BytesIO()
    im = Image.fromarray(img)
    if fmt == "jpeg":
        im.save(b, "JPEG", quality=int(q), subsampling=int(subsampling))
    elif fmt == "webp":
        im.save(b, "WEBP", quality=int(q), method=2)
    else:
        im.save(b, "PNG", compress_level=1)
    return b.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def jpeg_round(img: np.ndarray, q: int, subsampling: int = 2) -> np.ndarray:
    return decode(encode(img, "jpeg", q, subsampling))


def final_save(rng, img: np.ndarray, mask: np.ndarray | None) -> tuple[bytes, str, np.ndarray, np.ndarray | None, dict]:
    """The last steps every image takes: maybe a platform resize + recompression, then the save."""
    info: dict = {}
    if rng.random() < 0.2:  # a platform's re-encode: downscale, JPEG 70-90, then the user's save
        f = float(rng.uniform(0.6, 0.9))
        h, w = img.shape[:2]
        nh, nw = max(64, int(round(h * f))), max(64, int(round(w * f)))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        if mask is not None:
            # area-weighted: a resized pixel is changed if any changed pixel went into it (a sliver
            # never vanishes from the mask)
            mask = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA) > 0
        pq = int(rng.integers(70, 91))
        img = jpeg_round(img, pq)
        info["platform"] = {"resize": round(f, 3), "jpeg": pq}
    u = rng.random()
    if u < 0.72:
        q = int(rng.integers(60, 99))
        sub = 0 if rng.random() < 0.3 else 2
        data, ext = encode(img, "jpeg", q, sub), "jpg"
        info["final"] = {"format": "jpeg", "quality": q, "subsampling": "4:4:4" if sub == 0 else "4:2:0"}
    elif u < 0.87:
        data, ext = encode(img, "png"), "png"
        info["final"] = {"format": "png"}
    else:
        q = int(rng.integers(70, 96))
        data, ext = encode(img, "webp", q), "webp"
        info["final"] = {"format": "webp", "quality": q}
    return data, ext, decode(data), mask, info


# ---------------------------------------------------------------- photo edits
def _source(corpus: PhotoCorpus, rng, h: int, w: int, exclude: str | None = None) -> tuple[np.ndarray, dict]:
    """A crop of a photo at an arbitrary offset (maybe downscaled first), and where it came from."""
    ln = corpus.pick(rng, exclude)
    img = corpus.load(ln)
    info = {"package": ln["package"], "file": ln["file"], "first": {"format": ln.get("format"),
                                                                   "quality": ln.get("jpeg_quality")}}
    H, W = img.shape[:2]
    if rng.random() < 0.3 or min(H, W) < 64:
        f = float(rng.uniform(0.4, 0.9))
        img = cv2.resize(img, (max(32, int(W * f)), max(32, int(H * f))), interpolation=cv2.INTER_AREA)
        info["downscale"] = round(f, 3)
        H, W = img.shape[:2]
    hh, ww = min(h, H), min(w, W)
    y, x = int(rng.integers(0, H - hh + 1)), int(rng.integers(0, W - ww + 1))
    info["crop"] = [y, x, hh, ww]
    return np.ascontiguousarray(img[y:y + hh, x:x + ww]), info


def splice(rng, img, corpus: PhotoCorpus, host: str):
    """A region of another photo (another camera and quality, its own grid), sometimes rescaled,
    colour-matched or not, hard or feathered edges; or a photographic cut-out with its alpha."""
    h, w = img.shape[:2]
    info: dict = {}
    if corpus.cutouts and rng.random() < 0.3:
        ln = corpus.cutouts[int(rng.integers(len(corpus.cutouts)))]
        rgba = corpus.load(ln, "RGBA")
        s = float(rng.uniform(0.15, 0.5)) * min(h, w) / max(rgba.shape[:2])
        ch, cw = max(8, int(rgba.shape[0] * s)), max(8, int(rgba.shape[1] * s))
        rgba = cv2.resize(rgba, (cw, ch), interpolation=cv2.INTER_AREA)
        y, x = int(rng.integers(0, max(1, h - ch))), int(rng.integers(0, max(1, w - cw)))
        ch, cw = min(ch, h - y), min(cw, w - x)
        donor = img.copy()
        donor[y:y + ch, x:x + cw] = rgba[:ch, :cw, :3]
        alpha = np.zeros((h, w), np.float32)
        alpha[y:y + ch, x:x + cw] = rgba[:ch, :cw, 3] / 255.0
        info.update(donor=ln["file"], cutout=True)
        return img, R.composite(img, donor, alpha), info
    donor, dinfo = _source(corpus, rng, h, w, exclude=host)
    if donor.shape[:2] != (h, w):
        donor = cv2.resize(donor, (w, h), interpolation=cv2.INTER_LINEAR)
        dinfo["rescaled"] = True
    # 40%: the donor was saved once more on its way (a download, a screenshot)
    after, shape, sigma = paste_donor(rng, img, donor, dinfo, (0.01, 0.15), 0.4, jpeg_round)
    info.update(donor=dinfo, shape=shape, feather=sigma)
    return img, after, info


def patch_fill(rng, img, corpus, host):
    """Removal by exemplar fill: the hole takes a feathered patch from elsewhere in the image."""
    h, w = img.shape[:2]
    m, shape = R.random_region(rng, h, w, area=(0.004, 0.05), shapes=("ellipse", "blob", "polygon"))
    y0, y1, x0, x1 = R.bbox(m)
    bh, bw = y1 - y0, x1 - x0
    sy, sx = int(rng.integers(0, max(1, h - bh))), int(rng.integers(0, max(1, w - bw)))
    src = img.copy()
    src[y0:y1, x0:x1] = img[sy:sy + bh, sx:sx + bw][:bh, :bw]
    alpha, sigma = R.feather(rng, m, hard_p=0.2)
    return img, R.composite(img, src, alpha), {"shape": shape, "from": [sy, sx], "feather": round(sigma, 2)}


def local_recompress(rng, img, corpus, host):
    """A region re-saved at another JPEG quality, on the image's grid or a shifted one (hard edges:
    a feathered one would be a splice)."""
    h, w = img.shape[:2]
    q = int(rng.integers(40, 96))
    dy, dx = (int(rng.integers(1, 8)), int(rng.integers(1, 8))) if rng.random() < 0.5 else (0, 0)
    variant = img.copy()
    variant[dy:, dx:] = jpeg_round(np.ascontiguousarray(img[dy:, dx:]), q, 0 if rng.random() < 0.3 else 2)
    m, shape = R.random_region(rng, h, w, area=(0.03, 0.25), shapes=("rect", "polygon", "ellipse", "blob"))
    return img, R.composite(img, variant, m.astype(np.float32)), {"shape": shape, "quality": q, "grid_shift": [dy, dx]}


def _wrap(op):
    return lambda rng, img, corpus, host: op(rng, img, host)


PHOTO_OPS = {
    "splice": (splice, 3.0),
    "copy_move": (_wrap(copy_move), 2.0),
    "inpaint": (_wrap(inpaint_removal), 1.5),
    "patch_fill": (patch_fill, 1.0),
    "retouch": (_wrap(retouch), 1.5),
    "local_jpeg": (local_recompress, 2.0),
    "resample": (_wrap(resample), 1.0),
}


def _edit(rng, ops: dict, base: np.ndarray, *ctx) -> tuple[str, np.ndarray, np.ndarray, dict]:
    """Random ops until one changes a meaningful number of pixels (some are no-ops on flat areas)."""
    h, w = base.shape[:2]
    min_px = max(64, int(5e-4 * h * w))
    best = None
    for _ in range(6):
        kind = choose_op(rng, ops)
        before, after, info = ops[kind][0](rng, base, *ctx)
        m = R.changed(before, after)
        if m.sum() >= min_px:
            return kind, after, m, info
        if m.any() and (best is None or m.sum() > best[2].sum()):
            best = (kind, after, m, info)
    if best is None:
        raise DefakerError("no manipulation changed any pixel")
    return best


def natural(rng, corpus: PhotoCorpus, h: int, w: int, label: int) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(pixels before the final save, mask or None, manifest fields) of one natural image."""
    img, src = _source(corpus, rng, h, w)
    line = {"source": src}
    if not label:
        return img, None, {**line, "kind": "authentic"}
    kind, after, m, info = _edit(rng, PHOTO_OPS, img, corpus, src["file"])
    return after, m, {**line, "kind": kind, "edit": info}


def document(rng, h: int, w: int, label: int) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """A page after its first save (scanner or exporter) and, for fakes, one word-level edit."""
    page, items, layout = render_document(rng, h, w)
    img = scan(rng, page)
    q1 = int(rng.integers(55, 99))
    img = jpeg_round(img, q1, 0 if rng.random() < 0.5 else 2)
    line = {"source": {"layout": layout, "first": {"format": "jpeg", "quality": q1}}}
    m, kind, info = None, "authentic", None
    if label:
        kind, img, m, info = _edit(rng, DOCUMENT_OPS, img, items)
    # zero to two intermediate saves (a forwarded file, a re-export) before the final one, on
    # authentic pages as on edited ones
    mids = [int(rng.integers(55, 99)) for _ in range(int(rng.integers(0, 3)))]
    for q in mids:
        img = jpeg_round(img, q)
    line["source"]["intermediate"] = mids
    return img, m, {**line, "kind": kind, **({"edit": info} if info else {})}


_CORPUS: dict[str, PhotoCorpus] = {}


def corpus(path: str) -> PhotoCorpus:
    """One corpus per process (workers each load their own)."""
    if path not in _CORPUS:
        _CORPUS[path] = PhotoCorpus(path)
    return _CORPUS[path]
