"""TrueType fonts for documents: matplotlib's bundled DejaVu first (no system font needed), then
system DejaVu / Liberation fonts when present. Located without importing matplotlib (slow)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

_SYSTEM_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation",
                "/usr/share/fonts/truetype/liberation2", "/usr/share/fonts/dejavu", "/usr/share/fonts/liberation")


def _family(name: str) -> str:
    n = name.lower()
    if "mono" in n:
        return "mono"
    if "serif" in n and "sans" not in n:
        return "serif"
    return "sans"


@lru_cache(maxsize=1)
def font_files() -> dict[str, tuple[str, ...]]:
    """family ('sans' | 'serif' | 'mono') -> sorted font paths (deterministic order)."""
    dirs: list[Path] = []
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf")
    dirs += [Path(d) for d in _SYSTEM_DIRS]
    found: dict[str, list[str]] = {"sans": [], "serif": [], "mono": []}
    seen: set[str] = set()
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.ttf")):
            n = p.name
            # text faces only: skip symbol/math/display fonts that cannot render receipts
            if not (n.startswith("DejaVu") or n.startswith("Liberation")) or "Display" in n or "Math" in n \
                    or "ExtraLight" in n:
                continue
            if n in seen:
                continue
            seen.add(n)
            found[_family(n)].append(str(p))
    return {k: tuple(v) for k, v in found.items()}


def pick_font(rng, family: str | None = None) -> str | None:
    """A font path (None when no TrueType font exists: PIL's default font is used)."""
    files = font_files()
    fams = [f for f in ("sans", "serif", "mono") if files.get(f)]
    if not fams:
        return None
    fam = family if family in fams else fams[int(rng.integers(len(fams)))]
    paths = [p for p in files[fam] if "Oblique" not in p and "Italic" not in p] or list(files[fam])
    return paths[int(rng.integers(len(paths)))]


def similar_font(rng, path: str | None) -> str | None:
    """Another face of the same family (e.g. Bold for Book), what a forger picks when the exact one is missing."""
    if path is None:
        return None
    fam = _family(Path(path).name)
    others = [p for p in font_files().get(fam, ()) if p != path]
    return others[int(rng.integers(len(others)))] if others else path


@lru_cache(maxsize=256)
def load(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size)
