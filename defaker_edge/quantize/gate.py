"""The accuracy gate: a quantized model may lose at most the budget against FP32 on held-out data.

Deltas are FP32 minus quantized (positive = the quantized model is worse). The gate bounds their
absolute value: a quantized model that scores much *better* than FP32 on the held-out split is not
behaving like the model it replaces either (on a few hundred images that is noise moving decisions),
and the thresholds and the fallback band were calibrated on FP32; the package contract also checks
|fp32 - int8|. A metric that is undefined on the held-out split (AUC with one class present, pixel F1 with
no masks) is recorded as null and not gated, and the manifest says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DefakerError


class QuantGateError(DefakerError):
    """The quantized model lost more accuracy than the budget allows; nothing was written."""

    def __init__(self, message: str, deltas: dict[str, float | None]):
        super().__init__(message)
        self.deltas = deltas


@dataclass(frozen=True)
class Budget:
    image_auc: float = 0.005
    pixel_f1: float = 0.01

    def to_json(self) -> dict[str, float]:
        return {"image_auc": self.image_auc, "pixel_f1": self.pixel_f1}


def _num(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def deltas_of(fp32: dict, quant: dict) -> dict[str, float | None]:
    """FP32 minus quantized for image_auc and pixel_f1 (overall metrics dicts)."""
    out: dict[str, float | None] = {}
    for k in ("image_auc", "pixel_f1"):
        a, b = _num(fp32.get(k)), _num(quant.get(k))
        out[k] = None if a is None or b is None else a - b
    return out


def failures(deltas: dict[str, float | None], budget: Budget) -> list[str]:
    """Human-readable breaches, empty when the gate passes."""
    bad = []
    names = {"image_auc": "dAUC", "pixel_f1": "d pixel F1"}
    for k, lim in budget.to_json().items():
        d = deltas.get(k)
        if d is not None and abs(d) > lim + 1e-12:
            bad.append(f"|{names[k]}| {abs(d):.4f} > {lim:g}")
    return bad


def gate_error(precision: str, deltas: dict[str, float | None], budget: Budget, n_images: int,
               auto_tried: int | None = None) -> QuantGateError:
    bad = failures(deltas, budget)
    if auto_tried is None:
        hint = ("Try --auto-exclude to keep the sensitive layers in full precision, --exclude REGEX, "
                "or --force to write it anyway")
    else:
        hint = (f"--auto-exclude found no passing set of up to {auto_tried} FP32 layers; try --exclude REGEX, "
                f"another precision, a larger budget, or --force to write it anyway")
    return QuantGateError(
        f"{precision} model fails the accuracy gate: {', '.join(bad)} (FP32 vs {precision} on {n_images} "
        f"held-out images); nothing written. {hint}", deltas)
