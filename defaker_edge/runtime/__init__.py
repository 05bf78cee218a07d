"""The torch-free runtime a device runs (DESIGN §6): `Detector.load(...)`, `detector.check(img)`.

Imports numpy, Pillow and (when a backend is opened) onnxruntime / tensorrt / cuda-python only;
never torch, transformers or modelopt (a test proves it). `tiling` is the one tiling
implementation that calibration and distillation share.
"""

from .backends.base import Backend, BackendUnavailable
from .detector import Detector, InferenceError, Verdict
from .package import DEFAULT_PACKAGE, Package, load_package

__all__ = ["Detector", "Verdict", "InferenceError", "Backend", "BackendUnavailable",
           "Package", "load_package", "DEFAULT_PACKAGE"]
