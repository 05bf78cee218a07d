"""One held-out image at a time: pick a domain, label and kind from the index, draw everything else
from a generator seeded by (seed, index), so any image can be regenerated on its own."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..photos import read_photos
from . import documents, natural
from .codec import apply_saves, final_saves
from .regions import changed

MIN_CHANGED = 24  # pixels: an edit that changes fewer is redrawn (masks must be non-empty and visible)


class Maker:
    def __init__(self, cfg):
        from . import HeldoutError

        cv2.setNumThreads(1)  # one core, and results that do not depend on thread scheduling
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.photos = read_photos(cfg.photos, split="heldout", kind="photo") if "natural" in cfg.domains else []
        if "natural" in cfg.domains and not self.photos:
            raise HeldoutError(f"{cfg.photos}/photos.jsonl has no split=heldout photos")
        self.photo_ids = [{"package": p["package"], "file": p["file"], "sha256": p["sha256"]} for p in self.photos]
        self._cache: dict[str, np.ndarray] = {}

    def _decode(self, p) -> np.ndarray:
        a = self._cache.get(p["abspath"])
        if a is None:
            with Image.open(p["abspath"]) as im:  # decoded as shipped: no EXIF rotation, no re-encode
                a = np.asarray(im.convert("RGB"))
            if len(self._cache) > 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[p["abspath"]] = a
        return a

    def make(self, i: int) -> dict:
        cfg = self.cfg
        doms = cfg.domains
        domain = doms[i % len(doms)]
        j = i // len(doms)
        fake = j % 2 == 1
        kinds = list(natural.KINDS if domain == "natural" else documents.KINDS)
        kind = kinds[(j // 2) % len(kinds)] if fake else "authentic"
        rng = np.random.default_rng([cfg.seed, i])
        if domain == "natural":
            img, base, line = self._natural(rng, kind)
        else:
            img, base, line = self._document(rng, kind)
        n_saves = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        saves = final_saves(rng, n_saves)
        data, ext = apply_saves(img, saves)
        stem = f"{i:06d}"
        (self.out / "images" / f"{stem}{ext}").write_bytes(data)
        mask_rel = None
        if fake:
            m = changed(img, base)
            mask_rel = f"masks/{stem}.png"
            Image.fromarray(m.astype(np.uint8) * 255).save(self.out / mask_rel, compress_level=6)
            line["mask_frac"] = round(float(m.mean()), 5)
        return {"image": f"images/{stem}{ext}", "mask": mask_rel, "label": int(fake), "domain": domain,
                "kind": kind, "split": "test", **line, "final_compression": saves,
                "width": int(img.shape[1]), "height": int(img.shape[0])}

    def _crop(self, rng, p):
        """A crop of 512-1280 px per side at an arbitrary offset, sometimes from a larger area resized."""
        a = self._decode(p)
        H, W = a.shape[:2]
        tw = int(min(W, rng.integers(512, 1281)))
        th = int(min(H, rng.integers(512, 1281)))
        f = 1.0
        fmax = min(W / tw, H / th, 3.0)
        if fmax > 1.05 and rng.random() < 0.5:
            f = float(rng.uniform(1.0, fmax))
        cw, ch = min(W, int(round(tw * f))), min(H, int(round(th * f)))
        x, y = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
        c = a[y:y + ch, x:x + cw]
        if (cw, ch) != (tw, th):
            c = cv2.resize(c, (tw, th), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(c), {"crop": [x, y, cw, ch], "resize": round(tw / cw, 4)}

    def _natural(self, rng, kind):
        k = int(rng.integers(0, len(self.photos)))
        p = self.photos[k]
        base, geo = self._crop(rng, p)
        line = {"source": {"package": p["package"], "file": p["file"]},
                "first_compression": {"format": p["format"], "quality": p.get("jpeg_quality"),
                                      "camera": p.get("exif_camera")}, **geo}
        if kind == "authentic":
            return base, base, line
        donor = None
        if kind == "splice":
            others = [q for q in range(len(self.photos)) if q != k] or [k]
            dp = self.photos[int(rng.choice(others))]
            donor, _ = self._crop(rng, dp)
            line["donor"] = {"package": dp["package"], "file": dp["file"]}
        for _ in range(6):
            img, params = natural.KINDS[kind](rng, base, donor)
            if changed(img, base).sum() >= MIN_CHANGED:
                break
        line["params"] = params
        return img, base, line

    def _document(self, rng, kind):
        page, tokens, info = documents.render(rng)
        img, tokens, first = documents.first_save(rng, page, tokens)
        h, w = img.shape[:2]
        if rng.random() < 0.7:  # crop at an arbitrary offset: the first save's grid no longer lines up
            x, y = int(rng.integers(1, 40)), int(rng.integers(1, 40))
            cw, ch = w - x - int(rng.integers(0, 40)), h - y - int(rng.integers(0, 40))
            img = np.ascontiguousarray(img[y:y + ch, x:x + cw])
            tokens = documents.crop_tokens(tokens, x, y, cw, ch)
            info["crop"] = [x, y, cw, ch]
        line = {"source": {"generator": "heldout.documents", **{k: v for k, v in info.items() if k != "bg"}},
                "first_compression": first}
        if kind == "authentic":
            return img, img, line
        donor = None
        if kind == "doc_splice":
            dpage, dtok, _ = documents.render(rng)
            dimg, dtok, dfirst = documents.first_save(rng, dpage, dtok)
            donor = (dimg, dtok)
            line["donor_compression"] = dfirst
        for _ in range(6):
            out, params = documents.KINDS[kind](rng, img, tokens, donor)
            if changed(out, img).sum() >= MIN_CHANGED:
                break
        line["params"] = params
        return out, img, line
