"""Export stage: validated ONNX, TensorRT engines per target, and a self-describing, verifiable package.

Entry: `export_package(ExportConfig) -> Package`; `verify_package(path) -> VerifyReport`;
`build_package_engine(...)` for TensorRT. `defaker_edge.export.manifest` is the torch- and
onnx-free part (manifest reading, schema and sha256 checks) that the runtime reuses.
Nothing here imports torch or onnx at import time.
"""

from .manifest import Problem, read_manifest, verify_hashes
from .package import ExportConfig, Package, VerifyReport, export_package, verify_package, write_package
from .trt_builder import BuildPlan, EngineResult, build_package_engine, plan_build

__all__ = ["ExportConfig", "Package", "VerifyReport", "Problem", "export_package", "write_package", "verify_package",
           "read_manifest", "verify_hashes", "BuildPlan", "EngineResult", "plan_build", "build_package_engine"]
