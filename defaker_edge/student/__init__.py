"""Students: exportable, static-shape nets with the teacher's contract minus the language.

`model(x[B,3,T,T]) -> (fake_logit[B], mask_logits[B,1,T/4,T/4])`. Families: `compact` (INT8-friendly CNN)
and `pruned-teacher` (the teacher's ViT + a SAM2-style decoder). See config.PRESETS.
"""

from .config import FORMAT, PRESETS, StudentConfig
from .io import build_student, export_onnx, load_student, save_student

__all__ = ["FORMAT", "PRESETS", "StudentConfig", "build_student", "export_onnx", "load_student", "save_student"]
