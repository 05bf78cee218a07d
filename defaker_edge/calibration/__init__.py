"""Calibration: the calibration-set builder (for quantization) and threshold calibration.

Entry points: `build_calibration(CalibConfig(data, out, ...)) -> CalibResult`,
`load_calibration(dir) -> CalibrationSet`, and
`calibrate_thresholds(ThresholdConfig(model, data, ...)) -> (Thresholds, path)`.
"""

from .build import CalibConfig, CalibResult, build_calibration
from .reader import CalibrationSet, load_calibration
from .thresholds import ThresholdConfig, Thresholds, calibrate_thresholds, fit_temperature, threshold_at_fpr

__all__ = ["CalibConfig", "CalibResult", "CalibrationSet", "ThresholdConfig", "Thresholds", "build_calibration",
           "calibrate_thresholds", "fit_temperature", "load_calibration", "threshold_at_fpr"]
