"""DeFakerOne teacher adapter: InternVL + SAM2 (Sa2VA-style), presets, reference training, target cache.

Entry function: `load_teacher(spec, device="cpu") -> DeFakerOneTeacher`; `teacher.predict(img_u8)`
returns `TeacherOutput(fake_prob, mask_logits [H, W], seg_embedding [256], vision_features)`.
Typed config: `TeacherConfig` (presets "tiny", "reference", "defakerone-2b").

torch/transformers are imported lazily (PEP 562) so `defaker --help` and torch-free installs can
import this package's CLI module.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_teacher", "resolve_teacher_spec", "DeFakerOneTeacher", "TeacherOutput", "TeacherConfig",
           "build_teacher", "REFERENCE_DIR"]

PRESET_NAMES = ("tiny", "reference", "defakerone-2b")


def _reference_dir() -> Path:
    """models/reference-teacher in a checkout, else the copy installed inside the package."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "models" / "reference-teacher", here.parents[1] / "models" / "reference-teacher"):
        if (cand / "config.json").is_file():
            return cand
    return here.parents[2] / "models" / "reference-teacher"


REFERENCE_DIR = _reference_dir()


def resolve_teacher_spec(spec: str) -> str | Path:
    """A directory path, or a preset name ("reference" resolves to the committed checkpoint)."""
    p = Path(spec)
    if p.is_dir():
        return p
    if spec == "reference":
        return _reference_dir()
    if spec in PRESET_NAMES:
        return spec
    from ..errors import ArtifactError

    raise ArtifactError(f"--teacher {spec!r}: no such directory and not a preset ({', '.join(PRESET_NAMES)})")


def load_teacher(spec: str, device: str = "cpu", seed: int = 0):
    """A teacher from a checkpoint directory or a preset name.

    "tiny" builds random weights (seeded); "reference" loads models/reference-teacher;
    "defakerone-2b" builds the real-size architecture with random weights (for timing).
    """
    from .config import TeacherConfig
    from .model import DeFakerOneTeacher, build_teacher

    where = resolve_teacher_spec(spec)
    if isinstance(where, Path):
        if not (where / "config.json").is_file():
            from ..errors import ArtifactError

            raise ArtifactError(f"{where}: no config.json (is the reference teacher trained/committed?)")
        return DeFakerOneTeacher.from_pretrained(where, device=device)
    return build_teacher(TeacherConfig.from_preset(where), seed=seed, device=device)


def __getattr__(name: str):
    if name in ("DeFakerOneTeacher", "TeacherOutput", "build_teacher"):
        from . import model

        return getattr(model, name)
    if name == "TeacherConfig":
        from .config import TeacherConfig

        return TeacherConfig
    raise AttributeError(name)
