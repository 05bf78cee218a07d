"""Quantization: ModelOpt PTQ (INT8, FP8) and ORT static INT8 for CPUs, behind an accuracy gate.

Entry point: `quantize(model_dir, calib_dir, QuantConfig(precision=...)) -> QuantResult`.
Writes OUT/model.onnx (Q/DQ), OUT/model_fp32.onnx (the reference it was gated against) and
OUT/manifest.json (metrics, deltas, gate, excluded layers; INTERFACES.md).
"""

from .config import PRECISIONS, QuantConfig, QuantResult
from .gate import Budget, QuantGateError
from .pipeline import quantize

__all__ = ["PRECISIONS", "Budget", "QuantConfig", "QuantGateError", "QuantResult", "quantize"]
