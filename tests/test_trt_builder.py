"""TensorRT builder: the plan rules (target, precision, DLA, profile) and the API call sequence.

No TensorRT here: `FakeTRT` mimics the TensorRT 10 / 11 Python API by its real names (members that
TensorRT 11 removed are absent from the 11 fake, so using them fails) and records every call. These
tests show which calls a build makes, never that a real engine was built.
"""

from __future__ import annotations

import sys
import types
from enum import IntEnum

import pytest

from defaker_edge.errors import MissingDependencyError
from defaker_edge.export import targets
from defaker_edge.export.targets import BuildRefused, check_dla, resolve_target
from defaker_edge.export.trt_builder import EngineBuildError, build_serialized, plan_build


# ---------------------------------------------------------------- plan rules

@pytest.mark.parametrize("target,cc", [("orin", "8.7"), ("ampere", "8.6"), ("ampere", "8.0")])
def test_fp8_refused_below_8_9(target, cc):
    with pytest.raises(BuildRefused, match="FP8 needs compute capability >= 8.9"):
        plan_build(target, "fp8", "10.3", cc)


@pytest.mark.parametrize("target,cc", [("ada", "8.9"), ("hopper", "9.0")])
def test_fp8_allowed_from_8_9(target, cc):
    p = plan_build(target, "fp8", "10.8", cc)
    assert p.source_precision == "fp8" and p.builder_flags == ["FP8", "FP16"] and not p.strongly_typed


def test_trt10_flags_and_sources():
    assert plan_build("orin", "fp16", "10.3.0", "8.7").builder_flags == ["FP16"]
    p = plan_build("orin", "int8", "10.3.0", "8.7")
    assert p.builder_flags == ["INT8", "FP16"] and p.source_precision == "int8" and p.network_flags == []
    assert not p.autocast_fp16 and p.engine_name == "int8_orin_sm87_trt10.3.engine"


@pytest.mark.parametrize("precision,source,autocast", [("fp16", "fp32", True), ("int8", "int8", False),
                                                       ("fp8", "fp8", False)])
def test_trt11_is_strongly_typed_without_precision_flags(precision, source, autocast):
    p = plan_build("hopper", precision, "11.0.1", "9.0")
    assert p.strongly_typed and p.network_flags == ["STRONGLY_TYPED"] and p.builder_flags == []
    assert p.source_precision == source and p.autocast_fp16 is autocast


@pytest.mark.parametrize("ver,ok", [("10.3", True), ("10.7.0", True), ("10.8", False), ("11.0", False),
                                    ("11.3", False), ("11.4", True), ("12.0", True)])
def test_dla_versions_on_orin(ver, ok):
    if ok:
        p = plan_build("orin", "int8", ver, "8.7", dla=1)
        assert p.dla_core == 1 and p.builder_flags[-1] == "GPU_FALLBACK" and p.engine_name.endswith("_dla1.engine")
    else:
        with pytest.raises(BuildRefused, match="TensorRT <= 10.7 or >= 11.4"):
            plan_build("orin", "int8", ver, "8.7", dla=0)


def test_dla_refused_elsewhere():
    with pytest.raises(BuildRefused, match="Jetson Orin"):
        plan_build("hopper", "int8", "10.3", "9.0", dla=0)
    with pytest.raises(BuildRefused, match="cores 0 and 1"):
        check_dla(2, "8.7", "10.3", "int8")
    with pytest.raises(BuildRefused, match="fp16 and int8 only"):
        check_dla(0, "8.7", "10.3", "fp8")


def test_target_must_match_the_gpu_and_auto_names_it():
    with pytest.raises(BuildRefused, match="only run on the GPU they were built on"):
        plan_build("orin", "int8", "10.3", "9.0")
    assert resolve_target("auto", "8.9") == ("ada", "8.9")
    assert resolve_target("auto", "12.0") == ("sm_120", "12.0")
    assert resolve_target("orin", None) == ("orin", "8.7")
    with pytest.raises(BuildRefused, match="needs a visible GPU"):
        resolve_target("auto", None)
    with pytest.raises(BuildRefused, match="too old"):
        plan_build("orin", "int8", "8.6", "8.7")


def test_profile_and_workspace():
    p = plan_build("ampere", "fp16", "10.1", "8.6", tile=256, batch_max=16, workspace_mb=512)
    assert p.profile == {"min": [1, 3, 256, 256], "opt": [4, 3, 256, 256], "max": [16, 3, 256, 256]}
    assert p.workspace_bytes == 512 << 20
    assert plan_build("ampere", "fp16", "10.1", "8.6", batch_max=2).profile["opt"] == [2, 3, 512, 512]
    for bad in ({"batch_max": 0}, {"batch_max": 4, "batch_opt": 5}):
        with pytest.raises(BuildRefused):
            plan_build("ampere", "fp16", "10.1", "8.6", **bad)


# ---------------------------------------------------------------- the API calls, against a fake TensorRT

def fake_trt(version: str, *, parse_ok: bool = True, build_ok: bool = True, cache_ok: bool = True):
    """A module-like object with the TensorRT Python API names this builder uses; `calls` records them."""
    calls: list[tuple] = []
    major = int(version.split(".")[0])
    NetFlag = IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1} if major >= 11
                      else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    # TensorRT 11 removed the precision flags; keep only what it still has
    BFlag = IntEnum("BuilderFlag", {"GPU_FALLBACK": 1, "REFIT": 2} if major >= 11
                    else {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 2, "REFIT": 3, "FP8": 4})
    Pool = IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    Dev = IntEnum("DeviceType", {"GPU": 0, "DLA": 1})

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            calls.append(("Logger", severity))

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"cache:" + self.data

    class Config:
        def __init__(self):
            self.__dict__["_cache"] = None

        def __setattr__(self, k, v):
            calls.append(("config." + k, v))
            self.__dict__[k] = v

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            assert isinstance(flag, BFlag)
            calls.append(("set_flag", flag.name))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile", profile))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", data))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            self.__dict__["_cache"] = cache
            return cache_ok

        def get_timing_cache(self):
            return self.__dict__["_cache"]

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            calls.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return object()

        def create_builder_config(self):
            calls.append(("create_builder_config",))
            return Config()

        def create_optimization_profile(self):
            calls.append(("create_optimization_profile",))
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return b"ENGINE" if build_ok else None

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            calls.append(("OnnxParser",))

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, i):
            return "Unsupported op FooBar"

    return types.SimpleNamespace(__version__=version, calls=calls, Logger=Logger, Builder=Builder,
                                 OnnxParser=OnnxParser, NetworkDefinitionCreationFlag=NetFlag, BuilderFlag=BFlag,
                                 MemoryPoolType=Pool, DeviceType=Dev)


def _names(calls):
    return [c[0] for c in calls]


def test_trt10_int8_call_sequence():
    trt = fake_trt("10.3.0")
    plan = plan_build("orin", "int8", trt.__version__, "8.7", tile=64, batch_max=8, workspace_mb=256)
    engine, cache = build_serialized(trt, plan, "/pkg/model_int8.onnx", b"old")
    assert engine == b"ENGINE" and cache == b"cache:old"
    assert _names(trt.calls) == ["Logger", "Builder", "create_network", "OnnxParser", "parse_from_file",
                                 "create_builder_config", "set_memory_pool_limit", "set_flag", "set_flag",
                                 "create_optimization_profile", "set_shape", "add_optimization_profile",
                                 "create_timing_cache", "set_timing_cache", "build_serialized_network"]
    c = dict((x[0], x[1:]) for x in trt.calls)
    assert c["create_network"] == (0,) and c["parse_from_file"] == ("/pkg/model_int8.onnx",)
    assert c["set_memory_pool_limit"] == (trt.MemoryPoolType.WORKSPACE, 256 << 20)
    assert [x[1] for x in trt.calls if x[0] == "set_flag"] == ["INT8", "FP16"]
    assert c["set_shape"] == ("image", (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert c["set_timing_cache"] == (False,)


def test_trt11_strongly_typed_call_sequence():
    trt = fake_trt("11.4.0")
    plan = plan_build("orin", "int8", trt.__version__, "8.7", dla=0)
    build_serialized(trt, plan, "m.onnx")
    assert ("create_network", 1 << 1) in trt.calls  # STRONGLY_TYPED
    assert [x[1] for x in trt.calls if x[0] == "set_flag"] == ["GPU_FALLBACK"]
    assert ("config.default_device_type", trt.DeviceType.DLA) in trt.calls and ("config.DLA_core", 0) in trt.calls
    assert ("create_timing_cache", b"") in trt.calls


def test_trt10_plan_on_trt11_api_would_fail():
    # the fake 11 has no BuilderFlag.FP16: a weakly typed plan cannot slip through to a TensorRT 11 build
    with pytest.raises(AttributeError):
        build_serialized(fake_trt("11.0"), plan_build("orin", "fp16", "10.3", "8.7"), "m.onnx")


def test_build_failures_are_clear():
    plan = plan_build("orin", "fp16", "10.3", "8.7")
    with pytest.raises(EngineBuildError, match="Unsupported op FooBar"):
        build_serialized(fake_trt("10.3", parse_ok=False), plan, "m.onnx")
    with pytest.raises(EngineBuildError, match="failed to build"):
        build_serialized(fake_trt("10.3", build_ok=False), plan, "m.onnx")
    with pytest.raises(EngineBuildError, match="timing cache"):
        build_serialized(fake_trt("10.3", cache_ok=False), plan, "m.onnx", b"x")


def test_detect_compute_capability_returns_none_or_a_cc():
    cc = targets.detect_compute_capability()
    assert cc is None or targets.parse_cc(cc)


def test_detect_compute_capability_sources(monkeypatch):
    props = types.SimpleNamespace(major=8, minor=7)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime",
                        types.SimpleNamespace(cudaGetDeviceProperties=lambda i: (0, props)))
    assert targets.detect_compute_capability() == "8.7"
    # cuda-python reports an error (no device): fall through to nvidia-smi
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime",
                        types.SimpleNamespace(cudaGetDeviceProperties=lambda i: (100, None)))
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)  # None in sys.modules makes the import fail
    monkeypatch.setattr(targets.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    seen = []

    def run(cmd, **kw):
        seen.append(cmd)
        return types.SimpleNamespace(returncode=0, stdout="9.0\n9.0\n")

    monkeypatch.setattr(targets.subprocess, "run", run)
    assert targets.detect_compute_capability() == "9.0"
    assert seen[0][1:] == ["--query-gpu=compute_cap", "--format=csv,noheader"]
    monkeypatch.setattr(targets.shutil, "which", lambda name: None)
    assert targets.detect_compute_capability() is None


def test_cli_without_tensorrt_says_so_in_one_line(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    from defaker_edge.cli import main

    rc = main(["engine", "build", "--package", str(tmp_path), "--target", "orin", "--precision", "int8"])
    out = capsys.readouterr()
    assert rc != 0 and out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "tensorrt is required" in lines[0]
    from defaker_edge.export.trt_builder import import_tensorrt
    with pytest.raises(MissingDependencyError):
        import_tensorrt()


def test_cli_plan_prints_the_decisions(capsys):
    import json

    from defaker_edge.cli import main

    assert main(["engine", "plan", "--target", "orin", "--precision", "fp8", "--trt-version", "10.3"]) == 2
    assert "FP8 needs compute capability >= 8.9" in capsys.readouterr().err
    assert main(["engine", "plan", "--target", "hopper", "--precision", "fp16", "--trt-version", "11.4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["strongly_typed"] and plan["autocast_fp16"] and plan["compute_capability"] == "9.0"


# ---------------------------------------------------------------- the whole build against a package

@pytest.fixture(scope="module")
def package(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from defaker_edge.export import write_package
    from defaker_edge.export.onnx_export import export_onnx
    from test_export import TILE, make_quantized, make_student

    root = tmp_path_factory.mktemp("trtpkg")
    model, cfg = make_student(root / "student")
    q = make_quantized(export_onnx(model, TILE, root / "src.onnx"), root / "q", "int8")
    return write_package(model, cfg, root / "pkg", model_dir=root / "student", quantized=[q], n_random=2).path


def test_build_package_engine_records_it(package, tmp_path, monkeypatch):
    import shutil

    from defaker_edge.artifacts import read_json
    from defaker_edge.export import build_package_engine, verify_package

    pkg = tmp_path / "p"
    shutil.copytree(package, pkg)
    monkeypatch.setattr(targets, "detect_compute_capability", lambda: "8.7")
    trt = fake_trt("10.3.0")
    cache = tmp_path / "tc.bin"
    res = build_package_engine(pkg, "orin", "int8", dla=0, batch_max=4, timing_cache=cache, trt=trt)
    assert res.path.read_bytes() == b"ENGINE" and cache.read_bytes() == b"cache:"
    assert ("parse_from_file", str(pkg / "model_int8.onnx")) in trt.calls
    entry = next(f for f in read_json(pkg / "manifest.json")["files"] if f["format"] == "tensorrt")
    assert entry["path"] == "engines/int8_orin_sm87_trt10.3_dla0.engine"
    assert (entry["trt_version"], entry["compute_capability"], entry["dla_core"]) == ("10.3.0", "8.7", 0)
    assert entry["source"] == "model_int8.onnx" and entry["profile"]["max"] == [4, 3, 64, 64]
    assert verify_package(pkg, golden=False).ok
    # second build reuses the saved cache; an fp8 build on this GPU is refused before any TensorRT call
    trt2 = fake_trt("10.3.0")
    build_package_engine(pkg, "orin", "int8", timing_cache=cache, trt=trt2)
    assert ("create_timing_cache", b"cache:") in trt2.calls
    with pytest.raises(BuildRefused, match="FP8"):
        build_package_engine(pkg, "auto", "fp8", trt=fake_trt("10.3.0"))


def test_trt11_fp16_goes_through_autocast(package, tmp_path, monkeypatch):
    import shutil

    from defaker_edge.export import build_package_engine, trt_builder

    pkg = tmp_path / "p"
    shutil.copytree(package, pkg)
    monkeypatch.setattr(targets, "detect_compute_capability", lambda: "9.0")
    seen = {}

    def fake_autocast(src, dst):  # the AutoCast call itself: test_autocast_arguments
        seen["src"] = src
        shutil.copyfile(src, dst)
        return dst

    monkeypatch.setattr(trt_builder, "autocast_fp16", fake_autocast)
    trt = fake_trt("11.4.0")
    res = build_package_engine(pkg, "auto", "fp16", trt=trt)
    assert seen["src"] == pkg / "model_fp32.onnx" and res.entry["autocast_fp16"] and res.entry["target"] == "hopper"
    assert not [c for c in trt.calls if c[0] == "set_flag"]


def test_damaged_package_is_refused(package, tmp_path, monkeypatch):
    import shutil

    from defaker_edge.errors import ArtifactError
    from defaker_edge.export import build_package_engine

    pkg = tmp_path / "p"
    shutil.copytree(package, pkg)
    (pkg / "model_int8.onnx").write_bytes(b"broken")
    monkeypatch.setattr(targets, "detect_compute_capability", lambda: "8.7")
    with pytest.raises(ArtifactError, match="model_int8.onnx"):
        build_package_engine(pkg, "orin", "int8", trt=fake_trt("10.3"))


def test_autocast_arguments(tmp_path, monkeypatch):
    """autocast_fp16 calls ModelOpt's convert_to_mixed_precision with norms kept FP32 and FP32 I/O."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from defaker_edge.export.trt_builder import FP32_OPS, autocast_fp16

    got = {}

    def convert_to_mixed_precision(onnx_path, **kw):
        got.update(kw, onnx_path=onnx_path)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))

    # a stand-in module: the installed modelopt.onnx needs onnx_graphsurgeon, absent here
    monkeypatch.setitem(sys.modules, "modelopt.onnx.autocast",
                        types.SimpleNamespace(convert_to_mixed_precision=convert_to_mixed_precision))
    out = autocast_fp16(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert onnx.load(str(out)).graph.node[0].op_type == "Identity"
    assert got == {"onnx_path": str(tmp_path / "in.onnx"), "low_precision_type": "fp16",
                   "op_types_to_exclude": list(FP32_OPS), "keep_io_types": True}
    assert "LayerNormalization" in FP32_OPS


def test_real_autocast_keeps_layernorm_fp32(tmp_path):
    """Where ModelOpt's ONNX extras are installed (onnx_graphsurgeon), run the real AutoCast."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except ImportError as e:
        pytest.skip(f"modelopt.onnx unavailable: {e}")
    from defaker_edge.export.golden import run_onnx
    from defaker_edge.export.onnx_export import export_onnx
    from defaker_edge.export.trt_builder import autocast_fp16

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.ln = torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.LayerNorm(8)

        def forward(self, x):
            f = self.ln(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return f.mean((1, 2, 3)), f[:, :1]

    export_onnx(Net().eval(), 32, tmp_path / "in.onnx")
    m = onnx.load(str(autocast_fp16(tmp_path / "in.onnx", tmp_path / "out.onnx")))
    fp16 = onnx.TensorProto.FLOAT16
    assert any(n.op_type == "Cast" for n in m.graph.node)
    ln = next(n for n in m.graph.node if n.op_type == "LayerNormalization")
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    types_ = {vi.name: vi.type.tensor_type.elem_type for vi in (*m.graph.value_info, *m.graph.output)}
    assert types_.get(conv.output[0]) == fp16 and types_.get(ln.output[0]) != fp16
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O kept
    import numpy as np
    assert all(np.isfinite(o).all() for o in run_onnx(tmp_path / "out.onnx", np.zeros((1, 3, 32, 32), np.float32)))


def test_compression_history_inputs_get_their_own_profiles():
    """A package with the DCT stream (manifest input.extra) builds with a profile for dct and qtable
    over the image's batch range; a package without it keeps the one image profile."""
    from defaker_edge.export.trt_builder import _manifest_dct

    inp = {"name": "image", "tile": 64, "extra": {"dct": {"shape": [-1, 24, 8, 8], "dtype": "float32", "freqs": 24,
                                                          "clip": 10}, "qtable": {"shape": [-1, 64], "dtype": "float32"}}}
    assert _manifest_dct(inp) == (24, 10) and _manifest_dct({"name": "image", "tile": 64}) is None
    trt = fake_trt("10.3.0")
    plan = plan_build("orin", "int8", trt.__version__, "8.7", tile=64, batch_max=8, dct=_manifest_dct(inp))
    assert plan.extra_profiles["dct"] == {"min": [1, 24, 8, 8], "opt": [4, 24, 8, 8], "max": [8, 24, 8, 8]}
    build_serialized(trt, plan, "m.onnx")
    shapes = {x[1]: x[2:] for x in trt.calls if x[0] == "set_shape"}
    assert shapes["image"] == ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert shapes["qtable"] == ((1, 64), (4, 64), (8, 64)) and shapes["dct"][2] == (8, 24, 8, 8)
    assert plan_build("orin", "int8", "10.3.0", "8.7", tile=64).extra_profiles == {}
