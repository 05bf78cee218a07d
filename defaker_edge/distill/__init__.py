"""Distillation: teacher -> student (KD + ground truth, DDP-ready) and LoRA pruning of students.

Entry points: `distill(DistillConfig) -> DistillResult` and `prune(PruneConfig) -> PruneResult`.

Names are loaded lazily (PEP 562): `defaker --help` imports `distill.cli`, and with it this file,
on devices that have no torch; the trainer imports torch at module level.
"""

from __future__ import annotations

__all__ = ["AugConfig", "DistillConfig", "DistillResult", "LossWeights", "distill"]


def __getattr__(name: str):
    if name in ("DistillConfig", "DistillResult", "distill"):
        from . import trainer

        return getattr(trainer, name)
    if name == "LossWeights":
        from .losses import LossWeights

        return LossWeights
    if name == "AugConfig":
        from .data import AugConfig

        return AugConfig
    raise AttributeError(name)
