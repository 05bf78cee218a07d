"""Typed configuration and result of a synthesis run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import DefakerError
from ..dataset import DOMAINS


class SynthConfigError(DefakerError):
    """A synthesis option is out of range (the message names it and the allowed values)."""


@dataclass
class SynthConfig:
    out: str | os.PathLike
    n: int
    seed: int = 0
    domains: tuple[str, ...] = DOMAINS
    size_min: int = 256  # each side is drawn in [size_min, size_max] (aspect ratio 1:2 .. 2:1)
    size_max: int = 1024
    jpeg_prob: float = 0.7  # final encoding: JPEG (quality 60-100) with this probability, else PNG
    noise_prob: float = 0.15  # global sensor-like noise after everything, on reals and fakes alike
    benign_prob: float = 0.5  # each benign global op (recompress, resize, colour, sharpen) on every image
    workers: int | None = None  # None: 1 for small runs, 2 processes otherwise
    # a `defaker data photos` dir: natural images become edits of its train-split photos and
    # documents get a scanner's first save and recompressions (synth/photo.py)
    photos: str | None = None
    overwrite: bool = False
    progress: bool = False

    def validate(self) -> "SynthConfig":
        if isinstance(self.domains, str):
            self.domains = tuple(d.strip() for d in self.domains.split(",") if d.strip())
        self.domains = tuple(self.domains)
        bad = [d for d in self.domains if d not in DOMAINS]
        if bad:
            raise SynthConfigError(f"unknown domain(s) {', '.join(map(repr, bad))}; use a comma list of "
                                   f"{', '.join(DOMAINS)}")
        if not self.domains:
            raise SynthConfigError("no domains given; use a comma list of " + ", ".join(DOMAINS))
        if len(set(self.domains)) != len(self.domains):
            raise SynthConfigError(f"domains listed twice: {','.join(self.domains)}")
        if int(self.n) < 1:
            raise SynthConfigError(f"--n must be at least 1, got {self.n}")
        if self.seed < 0:
            raise SynthConfigError(f"--seed must be >= 0, got {self.seed}")
        if not (64 <= self.size_min <= self.size_max <= 8192):
            raise SynthConfigError(f"sizes must satisfy 64 <= size_min <= size_max <= 8192, got "
                                   f"{self.size_min}..{self.size_max}")
        for name in ("jpeg_prob", "noise_prob", "benign_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SynthConfigError(f"{name} must be in [0, 1], got {v}")
        if self.photos is not None:
            from pathlib import Path as _P

            jl = _P(self.photos) / "photos.jsonl" if _P(self.photos).is_dir() else _P(self.photos)
            if not jl.is_file():
                raise SynthConfigError(f"--photos {self.photos}: no photos.jsonl there "
                                       f"(make one with `defaker data photos --out {self.photos}`)")
        if self.workers is not None and self.workers < 1:
            raise SynthConfigError(f"--workers must be >= 1, got {self.workers}")
        return self


@dataclass
class SynthResult:
    out: Path
    manifest: Path  # OUT/manifest.jsonl
    n: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # by "domain", "kind", "label", "split"
    seconds: float = 0.0
    images_per_s: float = 0.0
    workers: int = 1
    cpu_seconds: float = 0.0  # CPU time spent making images, summed over workers

    @property
    def images_per_cpu_s(self) -> float:
        """Throughput of one core: what the run would reach per core on an idle machine."""
        return self.n / max(self.cpu_seconds, 1e-9)

    def to_json(self) -> dict:
        return {"out": str(self.out), "manifest": str(self.manifest), "n": self.n, "counts": self.counts,
                "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
                "images_per_cpu_s": round(self.images_per_cpu_s, 2), "workers": self.workers}
