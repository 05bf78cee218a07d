"""Typed configuration and result of `quantize` (INTERFACES.md, Quantize)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

PRECISIONS = ("int8", "fp8", "int8-cpu")
MANIFEST_FORMAT = "defaker-quant/1"


@dataclass
class QuantConfig:
    precision: str = "int8"  # int8 (ModelOpt Q/DQ, for TensorRT), fp8 (ModelOpt ONNX), int8-cpu (ORT static)
    out: str | None = None
    exclude: list[str] = field(default_factory=list)  # regexes on module names kept in full precision
    auto_exclude: bool = False  # add the most sensitive layers to `exclude` until the gate passes
    budget_auc: float = 0.005  # allowed |image-AUC change| vs FP32 (held-out split)
    budget_f1: float = 0.01  # allowed |pixel-F1 change| vs FP32
    data: str | None = None  # held-out data for the gate; default: the calibration set's source manifest
    split: str | None = None  # held-out split of `data` (default val, else test)
    force: bool = False  # write the model even when it fails the gate (recorded as forced)
    calib_n: int | None = None  # use only the first N calibration tiles (None: all)
    batch: int = 8
    opset: int = 17
    seed: int = 0
    sensitivity_tiles: int = 16  # calibration tiles each layer's sensitivity is measured on
    max_auto_exclude: int = 16  # the auto-exclude search never keeps more layers than this in FP32
    bench_tiles: int = 8  # tiles timed for the int8-cpu speed ratio (each run `repeats` times)
    threads: int | None = None  # ORT intra-op threads for evaluation (None: ORT's default)
    bench_threads: int = 1  # ORT threads for the int8-cpu speed ratio (1: stable on a shared CPU)
    # int8-cpu: take uint8 pixels, the normalization folded into the front end, which is then INT8
    # too (quantize.raw_input); off, or for a model without that front end, the classic float input
    raw_input: bool = True
    overlap: int | None = None  # tile overlap the gate scores images at; None: min(64, tile // 4), export's default
    # Test/experiment hook: called on the ModelOpt fake-quant model after calibration (before export),
    # e.g. to give one quantizer an absurd amax and check that the gate refuses the result.
    post_calibrate: Callable[[Any], None] | None = None

    def validate(self) -> None:
        from ..errors import DefakerError

        if self.precision not in PRECISIONS:
            raise DefakerError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.overlap is not None and self.overlap < 0:
            raise DefakerError(f"--overlap must be >= 0, got {self.overlap}")
        if self.budget_auc < 0 or self.budget_f1 < 0:
            raise DefakerError("--budget-auc and --budget-f1 must be >= 0")
        import re

        for pat in self.exclude:
            try:
                re.compile(pat)
            except re.error as e:
                raise DefakerError(f"--exclude {pat!r} is not a valid regex: {e}") from None


@dataclass
class QuantResult:
    out: Path | None  # None when nothing was written (refused by the gate)
    onnx: Path | None
    precision: str
    manifest: dict
    passed: bool | None  # None: no held-out data, the gate did not run
    deltas: dict[str, float] = field(default_factory=dict)
    excluded_layers: list[str] = field(default_factory=list)
