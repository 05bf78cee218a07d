"""Distillation: teacher -> student (KD + ground truth, DDP-ready) and LoRA pruning of students.

Entry points: `distill(DistillConfig) -> DistillResult` and `prune(PruneConfig) -> PruneResult`.
"""

from .trainer import DistillConfig, DistillResult, distill
from .losses import LossWeights
from .data import AugConfig

__all__ = ["AugConfig", "DistillConfig", "DistillResult", "LossWeights", "distill"]
