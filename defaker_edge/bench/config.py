"""The bench's typed config and result artifact."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

# Backends the bench knows. ORT ones map to execution providers (adapter.PROVIDERS); "torch" is
# the teacher's; "tensorrt" means prebuilt engines in the package.
KNOWN_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch")
RANDOM_PRESETS = ("tiny", "defakerone-2b")  # presets that only exist with random weights


@dataclass
class BenchConfig:
    package: Path
    out: Path
    data: Path | None = None
    split: str | None = None
    limit: int | None = None  # at most this many images (dataset order), for quick runs
    backends: list[str] | None = None  # None: every backend this machine has
    precisions: list[str] | None = None  # None: every variant in the package
    runs: int = 50
    warmup: int = 5
    batches: tuple[int, ...] = (1, 2, 4, 8)
    image_size: int = 1024
    threads: int = 0  # ORT intra-op threads / torch threads; 0 = the library's default (all cores)
    teacher: str | None = None  # a teacher dir or preset with weights: latency and accuracy
    teacher_preset: str | None = None  # e.g. defakerone-2b: latency at real size only
    random_weights: bool = False  # acknowledges that a preset's numbers are for random weights
    teacher_runs: int = 3
    teacher_warmup: int = 0  # the median of >= 3 runs leaves the cold first run out
    teacher_dtype: str = "fp32"
    teacher_device: str = "cpu"
    teacher_timeout_s: float = 7200.0
    robustness: bool = False
    robustness_levels: dict[str, list[float]] | None = None  # None: robustness.DEFAULT_LEVELS
    robustness_variants: list[str] | None = None  # None: fp32 and the CPU INT8 the runtime would pick
    robustness_limit: int | None = None  # first N images only (16 levels x variants x images adds up)
    compare: Path | None = None
    prefer_detector: bool = True  # accuracy through the runtime's Detector when it loads the variant
    worker_timeout_s: float = 1800.0
    seed: int = 0
    plots: bool = True

    def validate(self) -> None:
        from ..errors import DefakerError

        if self.runs < 1 or self.warmup < 0:
            raise DefakerError("--runs must be >= 1 and --warmup >= 0")
        if self.teacher_runs < 1:
            raise DefakerError("--teacher-runs must be >= 1 (the report records how many)")
        if self.image_size < 8:
            raise DefakerError("--image-size must be >= 8")
        if any(b < 1 for b in self.batches):
            raise DefakerError("--batches must be positive")
        for b in self.backends or []:
            if b not in KNOWN_BACKENDS:
                raise DefakerError(f"unknown backend {b!r}: use {', '.join(KNOWN_BACKENDS)}")
        if self.teacher_preset in RANDOM_PRESETS and not self.random_weights:
            raise DefakerError(f"preset {self.teacher_preset!r} has no trained weights; add --random-weights "
                               "to time it with random weights (accuracy is then reported as N/A)")
        for spec in (self.teacher, self.teacher_preset):
            if spec:
                _check_teacher_spec(spec)
        if (self.limit is not None and self.limit < 1) or (self.robustness_limit is not None and self.robustness_limit < 1):
            raise DefakerError("--limit and --robustness-limit must be >= 1")

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _check_teacher_spec(spec: str) -> None:
    """Fail before minutes of measuring, not after: a dir needs config.json, else a known preset."""
    from ..errors import ArtifactError

    p = Path(spec)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ArtifactError(f"--teacher {spec}: no config.json in that directory")
        return
    try:
        from ..teacher import resolve_teacher_spec  # torch-free at import
    except ImportError:
        return  # the teacher stage is not installed; the worker's row will say so
    resolve_teacher_spec(spec)


@dataclass
class BenchReport:
    """What `run_bench` wrote; `data` is report.json's content (schema in bench/README.md)."""
    out: Path
    data: dict
    files: dict[str, Path] = field(default_factory=dict)
