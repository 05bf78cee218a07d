"""TensorRT backend: a serialized engine run with execute_async_v3, buffers through cuda-python.

No torch: device memory is cudaMalloc'd once for the largest batch and reused; a batch is copied
in with cudaMemcpyAsync, every I/O tensor gets its address (set_tensor_address), the input its
shape (set_input_shape), and the outputs are copied back on the same stream.

An engine only runs on the TensorRT version and GPU compute capability that built it (DESIGN §7),
so both are checked against the manifest first; a mismatch is a BackendUnavailable with the
reason, which the Detector records as its fallback. `trt` and `cudart` can be injected (tests
pass recording fakes; names follow the TensorRT 10/11 and cuda-python APIs).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .. import tiling
from ..package import FileEntry
from .base import Backend, BackendUnavailable, check_outputs

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("tensorrt is not installed") from None
    return tensorrt


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python layout
        except ImportError:
            raise BackendUnavailable("cuda-python is not installed (pip install cuda-python)") from None
    return cudart


def _cuda(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python returns (err, *values); raise on an error, return the value(s)."""
    if not isinstance(result, tuple):
        result = (result,)
    err, rest = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def device_compute_capability(cudart: Any) -> str:
    dev = _cuda(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    prop = _cuda(cudart, cudart.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
    return f"{prop.major}.{prop.minor}"


def same_version(recorded: str, running: str) -> bool:
    """Equal on every component the manifest recorded (at least major.minor): '10.3' matches '10.3.0.26'."""
    a, b = str(recorded).split("."), str(running).split(".")
    n = min(len(a), len(b))
    return n >= 2 and a[:n] == b[:n]


def incompatibility(entry: FileEntry, trt_version: str, cc: str) -> str | None:
    """Why this engine cannot run here, or None."""
    if not entry.trt_version:
        return "engine: manifest records no trt_version"
    if not same_version(entry.trt_version, trt_version):
        return f"engine built with TensorRT {entry.trt_version}, this is TensorRT {trt_version}"
    if not entry.compute_capability:
        return "engine: manifest records no compute_capability"
    if str(entry.compute_capability) != cc:
        return f"engine built for compute capability {entry.compute_capability}, this GPU is {cc}"
    return None


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, entry: FileEntry, tile: int, *, input_name: str = "image",
                 max_batch: int = 8, trt: Any = None, cudart: Any = None, dct: tuple[int, int] | None = None):
        self.trt = trt if trt is not None else import_tensorrt()
        self.cudart = cudart if cudart is not None else import_cudart()
        self.precision = entry.precision
        self.tile = tile
        self._lock = threading.Lock()  # one execution context and one set of buffers: one batch at a time
        try:
            cc = device_compute_capability(self.cudart)
        except RuntimeError as e:
            raise BackendUnavailable(f"no usable CUDA device ({e})") from None
        why = incompatibility(entry, str(self.trt.__version__), cc)
        if why:
            raise BackendUnavailable(why)
        self.provider = f"TensorRT {self.trt.__version__} sm_{cc.replace('.', '')}"
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendUnavailable("tensorrt could not deserialize the engine (see its log above)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        # the compression-history stream's inputs (dct, qtable) beside the image (the manifest's input.extra)
        self.dct = dct
        want_in = 3 if self.dct else 1
        if len(ins) != want_in or len(outs) != 2:
            raise BackendUnavailable(f"engine has inputs {ins} and outputs {outs}; expected {want_in} and 2")
        self.input = [n for n in ins if n not in tiling.EXTRA_INPUTS][0]
        self.extra_names = [n for n in ins if n in tiling.EXTRA_INPUTS]
        if self.input != input_name:
            log.warning("engine input is named %r, the manifest says %r", self.input, input_name)
        self.outputs = ["fake_logit", "mask_logits"] if {"fake_logit", "mask_logits"} <= set(outs) else outs
        self.dtypes = {n: np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        shape = tuple(self.engine.get_tensor_shape(self.input))
        if shape[0] == -1:  # dynamic batch: the optimisation profile says how large it may be
            _, _, mx = self.engine.get_tensor_profile_shape(self.input, 0)
            self.max_batch = max(1, min(max_batch, int(mx[0])))
            self.static_batch = None
        else:  # a static engine runs exactly its batch; smaller batches are padded
            self.max_batch = self.static_batch = int(shape[0])
        self.stream = _cuda(self.cudart, self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        q = tile // 4
        full = {self.input: (self.max_batch, 3, tile, tile), self.outputs[0]: (self.max_batch,),
                self.outputs[1]: (self.max_batch, 1, q, q)}
        if self.dct and "dct" in self.dtypes:
            # an engine built from a package's ONNX takes the stream as that file did: uint8
            # channels-last (export.stream_layout), or float32 channels-first from older packages
            self.dct_layout = tiling.DCT_NHWC if self.dtypes["dct"] == np.uint8 else tiling.DCT_NCHW
            full["dct"] = tiling.dct_shape(self.max_batch, tile, self.dct, self.dct_layout)
            full["qtable"] = (self.max_batch, 64)
        self.dev: dict[str, int] = {}
        try:
            for n in names:
                nbytes = int(np.prod(full[n])) * self.dtypes[n].itemsize
                self.dev[n] = int(_cuda(self.cudart, self.cudart.cudaMalloc(nbytes), f"cudaMalloc({n})"))
        except RuntimeError as e:
            self.close()
            raise BackendUnavailable(f"could not allocate device buffers: {e}") from None

    def _one(self, batch: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        n = batch.shape[0]
        run_n = self.static_batch or n
        cu, kind = self.cudart, self.cudart.cudaMemcpyKind
        feeds = {self.input: batch, **{k: (extra or {})[k] for k in self.extra_names}}
        staged = []  # kept alive until the stream is synchronized
        for name, arr in feeds.items():
            x = np.zeros((run_n, *arr.shape[1:]), dtype=self.dtypes[name])
            x[:n] = arr
            staged.append(x)
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise RuntimeError(f"set_input_shape({name}, {tuple(x.shape)}) rejected by the engine")
            _cuda(cu, cu.cudaMemcpyAsync(self.dev[name], x.ctypes.data, x.nbytes,
                                         kind.cudaMemcpyHostToDevice, self.stream), "cudaMemcpyAsync H2D")
        host = {}
        for name in self.outputs:
            host[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name])
        for name, ptr in self.dev.items():
            if not self.context.set_tensor_address(name, ptr):
                raise RuntimeError(f"set_tensor_address({name}) rejected")
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("execute_async_v3 failed")
        for name in self.outputs:
            h = host[name]
            _cuda(cu, cu.cudaMemcpyAsync(h.ctypes.data, self.dev[name], h.nbytes,
                                         kind.cudaMemcpyDeviceToHost, self.stream), "cudaMemcpyAsync D2H")
        _cuda(cu, cu.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        fake, mask = host[self.outputs[0]][:n], host[self.outputs[1]][:n]
        return check_outputs(fake, mask, n, self.tile)

    def run(self, batch: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.dct and (not extra or any(k not in extra for k in self.extra_names)):
            raise ValueError("this engine also takes dct and qtable (tiling.extra_inputs)")
        with self._lock:
            return self._run_locked(batch, extra)

    def _run_locked(self, batch: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        fakes, masks = [], []
        for s in range(0, batch.shape[0], self.max_batch):
            part = {k: v[s:s + self.max_batch] for k, v in (extra or {}).items()}
            f, m = self._one(batch[s:s + self.max_batch], part)
            fakes.append(f)
            masks.append(m)
        return np.concatenate(fakes), np.concatenate(masks)

    def close(self) -> None:
        for ptr in getattr(self, "dev", {}).values():
            self.cudart.cudaFree(ptr)
        self.dev = {}
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):  # device memory outlives a forgotten backend otherwise
        try:
            self.close()
        except Exception:
            pass
