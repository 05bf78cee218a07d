"""FIDL datasets: a JSONL manifest or paired folders, read into a list of `Sample`s and validated.

Manifest line (paths relative to the manifest file):
  {"image": "images/0001.jpg", "mask": "masks/0001.png" | null, "label": 0 | 1,
   "domain": "natural" | "document" | "face" | "aigc", "kind": "splice", "split": "train", ...}
Extra keys are kept in `Sample.meta`. Label convention: 1 = manipulated or generated. A fake
with `mask: null` is allowed (no localization ground truth); for fully generated images (aigc)
the mask, when given, is all ones: every pixel was made by the generator.

Folder layouts:
  ROOT/images/ + ROOT/masks/   same stems; an image whose mask has any pixel set is fake
  ROOT/real/ + ROOT/fake/      (or authentic/ + tampered/); masks, if any, in ROOT/masks/
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from ..errors import DatasetError

log = logging.getLogger(__name__)

DOMAINS = ("natural", "document", "face", "aigc")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
_MAX_LISTED = 20  # offenders listed in one message; the count says how many in all


@dataclass
class Sample:
    image: str  # absolute path
    label: int  # 1 = manipulated / generated
    domain: str = "natural"
    mask: str | None = None  # absolute path, or None
    kind: str = "unknown"  # manipulation kind ("authentic" for real images)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the image path as written in the manifest (used to join predictions)

    def to_json(self, root: Path | None = None) -> dict[str, Any]:
        def rel(p: str | None) -> str | None:
            if p is None or root is None:
                return p
            return os.path.relpath(p, root)

        d = {"image": rel(self.image), "mask": rel(self.mask), "label": self.label,
             "domain": self.domain, "kind": self.kind}
        if self.split is not None:
            d["split"] = self.split
        d.update(self.meta)
        return d


def _problems_error(what: str, problems: list[str]) -> DatasetError:
    shown = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return DatasetError(f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)


def read_manifest(path: str | os.PathLike, *, check_files: bool = True, split: str | None = None) -> list[Sample]:
    """Read a JSONL manifest. Every malformed line or missing file is listed in one DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found")
    root = path.parent.resolve()
    samples: list[Sample] = []
    problems: list[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"line {n}: not JSON ({e.msg})")
                continue
            if not isinstance(d, dict) or "image" not in d:
                problems.append(f"line {n}: needs an object with an 'image' key")
                continue
            label = d.get("label")
            if label not in (0, 1, True, False):
                problems.append(f"line {n}: label must be 0 or 1, got {label!r}")
                continue
            domain = d.get("domain", "natural")
            if domain not in DOMAINS:
                problems.append(f"line {n}: unknown domain {domain!r} (use one of {', '.join(DOMAINS)})")
                continue
            img = str((root / d["image"]).resolve())
            mask = d.get("mask")
            mask_abs = str((root / mask).resolve()) if mask else None
            if check_files:
                if not os.path.isfile(img):
                    problems.append(f"line {n}: image not found: {d['image']}")
                if mask_abs and not os.path.isfile(mask_abs):
                    problems.append(f"line {n}: mask not found: {mask}")
            meta = {k: v for k, v in d.items() if k not in ("image", "mask", "label", "domain", "kind", "split")}
            samples.append(Sample(image=img, label=int(label), domain=domain, mask=mask_abs,
                                  kind=str(d.get("kind", "authentic" if not label else "unknown")),
                                  split=d.get("split"), meta=meta, key=str(d["image"])))
    if problems:
        raise _problems_error(str(path), problems)
    if split is not None:
        samples = [s for s in samples if s.split == split]
    if not samples:
        raise DatasetError(f"{path}: no samples" + (f" in split {split!r}" if split else ""))
    return samples


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _masks_by_stem(d: Path) -> dict[str, Path]:
    return {p.stem: p for p in _list_images(d)} if d.is_dir() else {}


def read_folders(root: str | os.PathLike, *, domain: str = "natural") -> list[Sample]:
    """Read the paired-folder layouts (see the module docstring)."""
    import numpy as np

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    if domain not in DOMAINS:
        raise DatasetError(f"unknown domain {domain!r}")
    masks = _masks_by_stem(root / "masks")
    samples: list[Sample] = []
    if (root / "images").is_dir():
        for p in _list_images(root / "images"):
            m = masks.get(p.stem)
            label = 0
            if m is not None:
                with Image.open(m) as mi:
                    label = int(np.asarray(mi.convert("L")).max() > 0)
            samples.append(Sample(image=str(p.resolve()), label=label, domain=domain,
                                  mask=str(m.resolve()) if m else None,
                                  kind="unknown" if label else "authentic", key=str(p.relative_to(root))))
    else:
        pairs = [("real", 0), ("authentic", 0), ("fake", 1), ("tampered", 1)]
        found = False
        for name, label in pairs:
            d = root / name
            if not d.is_dir():
                continue
            found = True
            for p in _list_images(d):
                m = masks.get(p.stem) if label else None
                samples.append(Sample(image=str(p.resolve()), label=label, domain=domain,
                                      mask=str(m.resolve()) if m else None,
                                      kind="unknown" if label else "authentic", key=str(p.relative_to(root))))
        if not found:
            raise DatasetError(f"{root}: expected images/ (+ masks/), or real/ + fake/ (authentic/ + tampered/), "
                               "or a manifest.jsonl")
    if not samples:
        raise DatasetError(f"{root}: no images found ({', '.join(IMAGE_EXTS)})")
    return samples


def load_dataset(path: str | os.PathLike, *, split: str | None = None, domain: str = "natural",
                 validate: bool = False) -> list[Sample]:
    """A manifest file, a directory holding manifest.jsonl, or a paired-folder directory."""
    p = Path(path)
    if p.is_file():
        samples = read_manifest(p, split=split)
    elif (p / "manifest.jsonl").is_file():
        samples = read_manifest(p / "manifest.jsonl", split=split)
    elif p.is_dir():
        samples = read_folders(p, domain=domain)
    else:
        raise DatasetError(f"{p}: no such manifest or directory")
    if validate:
        validate_samples(samples)
    return samples


def validate_samples(samples: Iterable[Sample], *, check_binary: bool = True) -> list[str]:
    """Check that masks match their images' sizes (error) and are binary (warning, thresholded on read).

    Reads image headers only, and mask pixels only when check_binary. Returns the warnings.
    """
    import numpy as np

    errors: list[str] = []
    warns: list[str] = []
    for s in samples:
        if not s.mask:
            continue
        try:
            with Image.open(s.image) as im:
                isize = im.size
            with Image.open(s.mask) as mm:
                msize = mm.size
                if check_binary:
                    vals = np.unique(np.asarray(mm.convert("L")))
                    if not (np.all(np.isin(vals, (0, 255))) or np.all(np.isin(vals, (0, 1)))):
                        warns.append(f"{s.mask}: not binary ({len(vals)} grey levels); thresholded at 128")
        except Exception as e:
            errors.append(f"{s.image}: cannot read ({type(e).__name__}: {e})")
            continue
        if isize != msize:
            errors.append(f"{s.mask}: mask is {msize[0]}x{msize[1]} but image {os.path.basename(s.image)} "
                          f"is {isize[0]}x{isize[1]}")
    if errors:
        raise _problems_error("dataset", errors)
    if warns:
        log.warning("%d non-binary mask(s), thresholded:\n  %s", len(warns), "\n  ".join(warns[:_MAX_LISTED]))
    return warns


def write_manifest(path: str | os.PathLike, samples: Iterable[Sample]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.to_json(root)) + "\n")
    os.replace(tmp, path)
