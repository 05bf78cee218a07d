"""TensorRT engine builder: a pure plan (what to build, how) and the API calls that carry it out.

`plan_build` decides everything (target, precision flags or strong typing, which ONNX, profile
shapes, DLA) from versions and compute capability alone, so tests exercise the real decisions.
`build_serialized` makes the TensorRT calls against whatever `trt` module it is given: the real
`tensorrt` on a device, a recording fake in the tests.

TensorRT 10: weakly typed networks; BuilderFlag.FP16 / INT8 / FP8 allow those precisions, and the
Q/DQ nodes of the ONNX fix where INT8/FP8 is used (explicit quantization, no calibrator).
TensorRT 11: strongly typed only (precision flags and the calibrator are gone): the ONNX's own
types decide, so FP16 comes from an AutoCast-converted FP32 ONNX and INT8/FP8 from the Q/DQ ONNX.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import write_json
from ..errors import ArtifactError, DefakerError, MissingDependencyError
from ..runtime.tiling import DCT_NCHW, DCT_NHWC, dct_shape
from . import targets
from .manifest import MANIFEST, check_files, file_entry, read_manifest

log = logging.getLogger(__name__)

# Ops AutoCast keeps in FP32 for TensorRT 11 FP16: normalizations overflow in FP16 (DESIGN §7,
# "FP16 LayerNorm overflow"), and the reductions/powers they decompose into when exported that way.
FP32_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "ReduceMean", "Pow", "Sqrt", "Erf")


class EngineBuildError(DefakerError):
    """TensorRT could not parse the ONNX or build the engine; the message carries TensorRT's errors."""


@dataclass
class BuildPlan:
    target: str
    compute_capability: str
    precision: str
    trt_version: str
    strongly_typed: bool
    network_flags: list[str]  # names in trt.NetworkDefinitionCreationFlag
    builder_flags: list[str]  # names in trt.BuilderFlag, set in this order
    source_precision: str  # which ONNX of the package feeds the parser ("fp32", "int8", "fp8")
    autocast_fp16: bool  # convert the source to mixed FP16 with ModelOpt AutoCast first (TensorRT 11 FP16)
    input_name: str
    profile: dict[str, list[int]]  # {"min": [...], "opt": [...], "max": [...]}
    workspace_bytes: int | None
    dla_core: int | None
    engine_name: str
    # the compression-history stream's inputs (dct, qtable): {name: {"min", "opt", "max"}}
    extra_profiles: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _manifest_dct(inp: dict) -> tuple[int, int] | None:
    """(freqs, clip) of the manifest's input.extra.dct, or None (a package without the stream)."""
    d = (inp.get("extra") or {}).get("dct") if isinstance(inp.get("extra"), dict) else None
    return (int(d["freqs"]), int(d["clip"])) if isinstance(d, dict) else None


def _manifest_layout(inp: dict) -> str:
    """The stream's layout in the manifest: uint8 channels-last in packages from export.stream_layout on."""
    d = (inp.get("extra") or {}).get("dct") if isinstance(inp.get("extra"), dict) else None
    return DCT_NHWC if isinstance(d, dict) and d.get("layout") == "NHWC" else DCT_NCHW


def plan_build(target: str, precision: str, trt_version: str, compute_capability: str | None, dla: int | None = None,
               *, tile: int = 512, batch_max: int = 8, batch_opt: int | None = None, workspace_mb: int | None = None,
               input_name: str = "image", dct: tuple[int, int] | None = None,
               dct_layout: str = DCT_NCHW) -> BuildPlan:
    """Every decision of a build, or BuildRefused saying why it cannot be built."""
    name, cc = targets.resolve_target(target, compute_capability)
    targets.check_precision(precision, cc)
    targets.check_dla(dla, cc, trt_version, precision)
    if batch_max < 1:
        raise targets.BuildRefused(f"--batch-max must be >= 1, got {batch_max}")
    opt = batch_opt if batch_opt is not None else min(4, batch_max)  # a typical image is a few tiles
    if not 1 <= opt <= batch_max:
        raise targets.BuildRefused(f"batch opt {opt} must lie in [1, {batch_max}]")
    major = targets.parse_trt_version(trt_version)[0]
    if major < 10:
        raise targets.BuildRefused(f"TensorRT {trt_version} is too old; this builder supports TensorRT 10 and 11")
    strongly = major >= 11
    source = "fp32" if precision == "fp16" else precision
    if strongly:
        flags: list[str] = []
    else:
        # FP16 alongside INT8/FP8: layers outside Q/DQ pairs run in FP16 rather than FP32
        flags = {"fp16": ["FP16"], "int8": ["INT8", "FP16"], "fp8": ["FP8", "FP16"]}[precision]
    if dla is not None:
        flags = [*flags, "GPU_FALLBACK"]  # layers the DLA cannot run go to the GPU instead of failing
    shape = lambda b: [b, 3, tile, tile]  # noqa: E731
    extra: dict[str, dict[str, list[int]]] = {}
    if dct is not None:  # same batch range as the image: each tile brings its stream and table
        for n, rest in (("dct", list(dct_shape(1, tile, dct, dct_layout)[1:])), ("qtable", [64])):
            extra[n] = {"min": [1, *rest], "opt": [opt, *rest], "max": [batch_max, *rest]}
    ver = ".".join(str(v) for v in targets.parse_trt_version(trt_version))
    engine = f"{precision}_{name}_sm{cc.replace('.', '')}_trt{ver}{'' if dla is None else f'_dla{dla}'}.engine"
    return BuildPlan(target=name, compute_capability=cc, precision=precision, trt_version=str(trt_version),
                     strongly_typed=strongly, network_flags=["STRONGLY_TYPED"] if strongly else [],
                     builder_flags=flags, source_precision=source, autocast_fp16=strongly and precision == "fp16",
                     input_name=input_name, profile={"min": shape(1), "opt": shape(opt), "max": shape(batch_max)},
                     workspace_bytes=None if workspace_mb is None else int(workspace_mb) << 20, dla_core=dla,
                     engine_name=engine, extra_profiles=extra)


def build_serialized(trt: Any, plan: BuildPlan, onnx_path: str | os.PathLike,
                     timing_cache: bytes | None = None) -> tuple[bytes, bytes]:
    """Parse the ONNX and build per `plan` through the TensorRT API `trt`; (engine bytes, timing cache bytes)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    net_flags = 0
    for f in plan.network_flags:
        net_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, f))
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)): it resolves external-data paths next to the model
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {'; '.join(errs) or 'no details'}")
    config = builder.create_builder_config()
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for f in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, plan.profile["min"], plan.profile["opt"], plan.profile["max"])
    for n, p in plan.extra_profiles.items():
        profile.set_shape(n, p["min"], p["opt"], p["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache or b"")
    # ignore_mismatch=False: a cache from another GPU/TensorRT must not silently steer tactics
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineBuildError("the timing cache does not match this GPU / TensorRT version; delete it or use another")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {plan.engine_name} (see TensorRT's log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def autocast_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """FP32 ONNX -> mixed FP16 ONNX with ModelOpt AutoCast, norms kept FP32 and FP32 I/O (TensorRT 11 FP16)."""
    try:
        import onnx
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as e:
        raise MissingDependencyError("nvidia-modelopt[onnx]", "TensorRT 11 FP16 (AutoCast)", f"import failed: {e}") from None
    model = convert_to_mixed_precision(str(src), low_precision_type="fp16", op_types_to_exclude=list(FP32_OPS),
                                       keep_io_types=True)
    onnx.save(model, str(dst))
    return Path(dst)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("tensorrt", "building TensorRT engines",
                                     "build on the target GPU/Jetson where TensorRT 10 or 11 is installed") from None
    return tensorrt


@dataclass
class EngineResult:
    path: Path
    plan: BuildPlan
    entry: dict[str, Any] = field(default_factory=dict)


def build_package_engine(package: str | os.PathLike, target: str = "auto", precision: str = "fp16", *,
                         workspace_mb: int | None = None, timing_cache: str | os.PathLike | None = None,
                         dla: int | None = None, batch_max: int = 8, batch_opt: int | None = None,
                         trt: Any = None) -> EngineResult:
    """Build one engine from PACKAGE's ONNX into PACKAGE/engines/ and record it in the manifest."""
    trt = trt or import_tensorrt()  # first: without TensorRT nothing else matters
    package = Path(package)
    m = read_manifest(package)
    bad = [p for p in check_files(package, m) if not p.file.startswith("engines/")]
    if bad:
        raise ArtifactError(f"{package}: refusing to build from a damaged package: " + "; ".join(map(str, bad)))
    inp = m["input"]
    plan = plan_build(target, precision, trt.__version__, targets.detect_compute_capability(), dla,
                      tile=int(inp["tile"]), batch_max=batch_max, batch_opt=batch_opt, workspace_mb=workspace_mb,
                      input_name=inp["name"], dct=_manifest_dct(inp), dct_layout=_manifest_layout(inp))
    src = next((f for f in m["files"] if f.get("format") == "onnx" and f.get("precision") == plan.source_precision), None)
    if src is None:
        raise ArtifactError(f"{package}: has no {plan.source_precision} ONNX to build a {precision} engine from "
                            f"(quantize with --precision {plan.source_precision} and export with --quantized)")
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else None
    with tempfile.TemporaryDirectory() as td:
        onnx_path = package / src["path"]
        if plan.autocast_fp16:
            onnx_path = autocast_fp16(onnx_path, Path(td) / "model_fp16.onnx")
        log.info("building %s from %s (%s)", plan.engine_name, src["path"], plan.to_json())
        engine, cache = build_serialized(trt, plan, onnx_path, cache_bytes)
    rel = f"engines/{plan.engine_name}"
    (package / "engines").mkdir(exist_ok=True)
    (package / rel).write_bytes(engine)
    if timing_cache:
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        Path(timing_cache).write_bytes(cache)
    entry = file_entry(package, rel, precision, "tensorrt", "engine", target=plan.target,
                       trt_version=plan.trt_version, compute_capability=plan.compute_capability, dla_core=plan.dla_core,
                       source=src["path"], source_sha256=src["sha256"], strongly_typed=plan.strongly_typed,
                       autocast_fp16=plan.autocast_fp16, profile=plan.profile)
    m["files"] = [f for f in m["files"] if f.get("path") != rel] + [entry]
    write_json(package / MANIFEST, m)
    return EngineResult(package / rel, plan, entry)
