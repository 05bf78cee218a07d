"""TensorRT backend logic with recording fakes of `tensorrt` and cuda-python's runtime.

TensorRT cannot be installed here. The fakes follow the TensorRT 10/11 Python API (Runtime,
deserialize_cuda_engine, num_io_tensors, get_tensor_name/mode/dtype/shape/profile_shape,
set_input_shape, set_tensor_address, execute_async_v3) and cuda-python's (err, value) tuples.
"Device memory" is real host memory addressed by integers, so the copies really move the bytes,
and the fake engine computes with the package's FP32 ONNX: what comes back must match it.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from defaker_edge.artifacts import sha256_file
from defaker_edge.runtime import Detector, tiling
from defaker_edge.runtime.backends.base import BackendUnavailable
from defaker_edge.runtime.backends.tensorrt import TrtBackend, same_version
from defaker_edge.runtime.package import FileEntry

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import TILE, ort_run, tiny_package, write_manifest  # noqa: E402

ENGINE_MAGIC = b"FAKE-TRT-ENGINE"


class FakeCudart:
    def __init__(self, cc=(8, 7)):
        self.calls: list[tuple] = []
        self.mem: dict[int, ctypes.Array] = {}
        self.cc = cc
        self.cudaError_t = SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def cudaGetDevice(self):
        return (0, 0)

    def cudaGetDeviceProperties(self, dev):
        return (0, SimpleNamespace(major=self.cc[0], minor=self.cc[1]))

    def cudaStreamCreate(self):
        self.calls.append(("cudaStreamCreate",))
        return (0, 4242)

    def cudaMalloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.mem[ctypes.addressof(buf)] = buf
        self.calls.append(("cudaMalloc", n))
        return (0, ctypes.addressof(buf))

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        dev = dst if kind == 1 else src
        assert dev in self.mem and count <= len(self.mem[dev]), "copy outside a cudaMalloc'd buffer"
        ctypes.memmove(dst, src, count)
        self.calls.append(("cudaMemcpyAsync", kind, count, stream))
        return (0,)

    def cudaStreamSynchronize(self, s):
        self.calls.append(("cudaStreamSynchronize", s))
        return (0,)

    def cudaFree(self, p):
        self.mem.pop(p, None)
        return (0,)

    def cudaStreamDestroy(self, s):
        return (0,)


class FakeContext:
    def __init__(self, engine):
        self.e, self.shapes, self.addr, self.calls = engine, {}, {}, []

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n = self.shapes["image"][0]
        return {"fake_logit": (n,), "mask_logits": (n, 1, TILE // 4, TILE // 4)}.get(name, self.shapes.get(name))

    def set_tensor_address(self, name, ptr):
        self.calls.append(("set_tensor_address", name))
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        assert isinstance(stream_handle, int)
        self.calls.append(("execute_async_v3", stream_handle))
        shape = self.shapes["image"]
        x = np.frombuffer((ctypes.c_char * (int(np.prod(shape)) * 4)).from_address(self.addr["image"]),
                          dtype=np.float32).reshape(shape)
        f, m = ort_run(self.e.onnx, x.copy())
        f, m = np.ascontiguousarray(f, np.float32), np.ascontiguousarray(m, np.float32)  # kept alive for memmove
        ctypes.memmove(self.addr["fake_logit"], f.ctypes.data, f.nbytes)
        ctypes.memmove(self.addr["mask_logits"], m.ctypes.data, m.nbytes)
        return True


class FakeEngine:
    names = ["image", "fake_logit", "mask_logits"]

    def __init__(self, onnx, static_batch=None):
        self.onnx, self.static = onnx, static_batch
        self.num_io_tensors = 3
        self.contexts = []

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "image" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "FLOAT"

    def get_tensor_shape(self, name):
        b = self.static or -1
        return {"image": (b, 3, TILE, TILE), "fake_logit": (b,), "mask_logits": (b, 1, TILE // 4, TILE // 4)}[name]

    def get_tensor_profile_shape(self, name, profile):
        return ((1, 3, TILE, TILE), (4, 3, TILE, TILE), (16, 3, TILE, TILE))

    def create_execution_context(self):
        c = FakeContext(self)
        self.contexts.append(c)
        return c


def fake_trt(onnx: Path, version="10.3.0.26", static_batch=None):
    engines = []

    class Logger:
        WARNING = 2

        def __init__(self, sev):
            self.sev = sev

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, Logger)

        def deserialize_cuda_engine(self, data):
            if not data.startswith(ENGINE_MAGIC):
                return None
            engines.append(FakeEngine(onnx, static_batch))
            return engines[-1]

    return SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime, engines=engines,
                           TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
                           nptype=lambda dt: {"FLOAT": np.float32}[dt])


def _entry(path, **kw):
    return FileEntry(path=str(path), precision="int8", format="tensorrt", trt_version=kw.get("v", "10.3.0"),
                     compute_capability=kw.get("cc", "8.7"))


@pytest.fixture
def pkg(tmp_path):
    return tiny_package(tmp_path / "pkg")


@pytest.fixture
def engine(pkg):
    p = pkg / "engines" / "orin-int8.engine"
    p.parent.mkdir()
    p.write_bytes(ENGINE_MAGIC + b"\0" * 64)
    return p


def test_run_moves_data_through_the_api(pkg, engine):
    trt, cu = fake_trt(pkg / "model_fp32.onnx"), FakeCudart()
    be = TrtBackend(engine, _entry(engine), TILE, max_batch=8, trt=trt, cudart=cu)
    assert be.max_batch == 8 and be.provider.startswith("TensorRT 10.3.0.26 sm_87")
    x = tiling.normalize(np.random.default_rng(0).integers(0, 256, (11, TILE, TILE, 3), dtype=np.uint8))
    f, m = be.run(x)
    rf, rm = ort_run(pkg / "model_fp32.onnx", x)
    np.testing.assert_allclose(f, rf, atol=1e-5)
    np.testing.assert_allclose(m, rm, atol=1e-5)
    ctx = trt.engines[0].contexts[0].calls
    # 11 tiles with max batch 8: two executions, shapes set each time, every I/O tensor addressed
    assert [c for c in ctx if c[0] == "set_input_shape"] == [("set_input_shape", "image", (8, 3, TILE, TILE)),
                                                            ("set_input_shape", "image", (3, 3, TILE, TILE))]
    assert {c[1] for c in ctx if c[0] == "set_tensor_address"} == {"image", "fake_logit", "mask_logits"}
    assert [c for c in ctx if c[0] == "execute_async_v3"] == [("execute_async_v3", 4242)] * 2
    kinds = [c[1] for c in cu.calls if c[0] == "cudaMemcpyAsync"]
    assert kinds == [1, 2, 2] * 2  # H2D input, D2H both outputs, per execution
    assert sum(1 for c in cu.calls if c[0] == "cudaMalloc") == 3  # allocated once, reused
    be.close()
    assert cu.mem == {}


def test_static_batch_engine_pads(pkg, engine):
    trt, cu = fake_trt(pkg / "model_fp32.onnx", static_batch=4), FakeCudart()
    be = TrtBackend(engine, _entry(engine), TILE, trt=trt, cudart=cu)
    x = tiling.normalize(np.random.default_rng(1).integers(0, 256, (2, TILE, TILE, 3), dtype=np.uint8))
    f, m = be.run(x)
    assert f.shape == (2,) and m.shape == (2, 1, TILE // 4, TILE // 4)
    assert trt.engines[0].contexts[0].calls[0] == ("set_input_shape", "image", (4, 3, TILE, TILE))


@pytest.mark.parametrize("kw,why", [
    ({"v": "10.1.0"}, "engine built with TensorRT 10.1.0, this is TensorRT 10.3.0.26"),
    ({"cc": "9.0"}, "engine built for compute capability 9.0, this GPU is 8.7"),
    ({"v": None}, "manifest records no trt_version"),
])
def test_incompatible_engine_is_skipped_with_a_reason(pkg, engine, kw, why):
    e = _entry(engine, **kw)
    if kw.get("v", 1) is None:
        e = FileEntry(path=e.path, precision="int8", format="tensorrt", compute_capability="8.7")
    with pytest.raises(BackendUnavailable, match=why):
        TrtBackend(engine, e, TILE, trt=fake_trt(pkg / "model_fp32.onnx"), cudart=FakeCudart())


def test_bad_engine_bytes(pkg, engine):
    engine.write_bytes(b"garbage")
    with pytest.raises(BackendUnavailable, match="could not deserialize"):
        TrtBackend(engine, _entry(engine), TILE, trt=fake_trt(pkg / "model_fp32.onnx"), cudart=FakeCudart())


def test_version_matching():
    assert same_version("10.3", "10.3.0.26") and same_version("10.3.0.26", "10.3.0.26")
    assert not same_version("10.3", "10.4.0") and not same_version("10", "10.3")


def _with_engine(pkg, engine, cc="8.7"):
    write_manifest(pkg, extra_files=[{"path": "engines/orin-int8.engine", "sha256": sha256_file(engine),
                                      "precision": "int8", "format": "tensorrt", "trt_version": "10.3.0",
                                      "compute_capability": cc, "dla_core": None}])


def test_detector_on_engine(pkg, engine):
    _with_engine(pkg, engine)
    det = Detector.load(pkg, backend="tensorrt", trt=fake_trt(pkg / "model_fp32.onnx"), cudart=FakeCudart())
    img = np.random.default_rng(2).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    v = det.check(img)
    ref = Detector.load(pkg, precision="fp32").check(img)
    assert (v.backend, v.precision, v.fallback) == ("tensorrt", "int8", None)
    assert v.fake_prob == pytest.approx(ref.fake_prob, abs=1e-5)


def test_detector_falls_back_from_an_incompatible_engine(pkg, engine):
    _with_engine(pkg, engine, cc="9.0")
    det = Detector.load(pkg, backend="tensorrt", trt=fake_trt(pkg / "model_fp32.onnx"), cudart=FakeCudart())
    assert det.backend.name == "onnxruntime" and det.backend.precision == "fp32"
    assert det.load_fallback == "engine int8: engine built for compute capability 9.0, this GPU is 8.7"


def test_without_tensorrt_installed_it_fails_cleanly(pkg, engine):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    _with_engine(pkg, engine)
    det = Detector.load(pkg, backend="tensorrt")
    assert det.backend.precision == "fp32" and det.load_fallback == "engine int8: tensorrt is not installed"


def test_auto_prefers_a_compatible_engine_on_a_gpu_box(pkg, engine, monkeypatch):
    import defaker_edge.runtime.detector as detector

    monkeypatch.setattr(detector, "_has", lambda name: name == "tensorrt")  # "tensorrt is installed"
    _with_engine(pkg, engine)
    det = Detector.load(pkg, trt=fake_trt(pkg / "model_fp32.onnx"), cudart=FakeCudart())
    assert (det.backend.name, det.backend.precision, det.load_fallback) == ("tensorrt", "int8", None)
    det = Detector.load(pkg, trt=fake_trt(pkg / "model_fp32.onnx", version="10.4.1"), cudart=FakeCudart())
    assert det.backend.name == "onnxruntime"
    assert det.load_fallback == "engine int8: engine built with TensorRT 10.3.0, this is TensorRT 10.4.1"


class _DctContext(FakeContext):
    """Executes a compression-history engine: reads image, dct and qtable from their device buffers."""

    def execute_async_v3(self, stream_handle):
        import onnxruntime as ort

        self.calls.append(("execute_async_v3", stream_handle))
        feeds = {}
        for name in ("image", "dct", "qtable"):
            shape = self.shapes[name]
            feeds[name] = np.frombuffer((ctypes.c_char * (int(np.prod(shape)) * 4)).from_address(self.addr[name]),
                                        dtype=np.float32).reshape(shape).copy()
        s = ort.InferenceSession(str(self.e.onnx), providers=["CPUExecutionProvider"])
        f, m = (np.ascontiguousarray(a, np.float32) for a in s.run(["fake_logit", "mask_logits"], feeds))
        ctypes.memmove(self.addr["fake_logit"], f.ctypes.data, f.nbytes)
        ctypes.memmove(self.addr["mask_logits"], m.ctypes.data, m.nbytes)
        return True


class _DctEngine(FakeEngine):
    names = ["image", "dct", "qtable", "fake_logit", "mask_logits"]

    def __init__(self, onnx, freqs):
        super().__init__(onnx)
        self.num_io_tensors, self.freqs = 5, freqs

    def get_tensor_mode(self, name):
        return "INPUT" if name in ("image", "dct", "qtable") else "OUTPUT"

    def get_tensor_shape(self, name):
        return {"dct": (-1, self.freqs, TILE // 8, TILE // 8), "qtable": (-1, 64)}.get(name) or super().get_tensor_shape(name)

    def create_execution_context(self):
        c = _DctContext(self)
        self.contexts.append(c)
        return c


def test_engine_with_the_dct_stream_gets_all_three_inputs(tmp_path):
    """An engine built from a compression-history model takes dct and qtable beside the image; the
    backend stages all three per batch and answers as the ONNX file does on the same feeds."""
    torch = pytest.importorskip("torch")
    from defaker_edge.export.golden import as_jpeg
    from defaker_edge.runtime.backends.onnxruntime import session_feeds
    from defaker_edge.runtime.backends.tensorrt import TrtBackend
    from defaker_edge.student import StudentConfig, build_student, export_onnx

    torch.manual_seed(0)
    onnx_path = export_onnx(build_student(StudentConfig.from_preset("block-dct-s", tile=TILE)).eval(), TILE,
                            tmp_path / "m.onnx")
    trt, cu = fake_trt(onnx_path), FakeCudart()
    trt.Runtime = type("R", (), {"__init__": lambda self, lg: None,
                                 "deserialize_cuda_engine": lambda self, d: trt.engines.append(
                                     _DctEngine(onnx_path, 8)) or trt.engines[-1]})
    engine = tmp_path / "e.engine"
    engine.write_bytes(ENGINE_MAGIC + b"\0" * 8)
    with pytest.raises(BackendUnavailable, match="expected 1"):
        TrtBackend(engine, _entry(engine), TILE, trt=trt, cudart=cu)  # a manifest without the stream
    be = TrtBackend(engine, _entry(engine), TILE, max_batch=4, trt=trt, cudart=cu, dct=(8, 10))
    tiles, tables = as_jpeg(np.random.default_rng(0).integers(0, 256, (6, TILE, TILE, 3), dtype=np.uint8))
    f, m = be.run_tiles(tiles, tables)
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rf, rm = s.run(["fake_logit", "mask_logits"], session_feeds(s, tiles, tables))
    np.testing.assert_allclose(f, rf, atol=1e-5)
    np.testing.assert_allclose(m, rm, atol=1e-5)
    shapes = [c[1:] for c in trt.engines[-1].contexts[0].calls if c[0] == "set_input_shape"]
    assert ("dct", (4, 8, TILE // 8, TILE // 8)) in shapes and ("qtable", (2, 64)) in shapes
    with pytest.raises(ValueError, match="dct and qtable"):
        be.run(tiling.normalize(tiles))
    be.close()
