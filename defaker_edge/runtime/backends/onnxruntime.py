"""ONNX Runtime backend: TensorRT EP -> CUDA EP -> CPU EP, keeping only the providers this build has.

ORT silently drops a provider it cannot initialise (a missing CUDA library, say) and runs on the
next one, so `provider` is read back from the session (get_providers()[0]) instead of assumed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import tiling
from .base import Backend, BackendUnavailable, check_outputs

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed") from None
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(_ort().get_available_providers())
    except BackendUnavailable:
        return []


def choose_providers(asked: Sequence[str] | None = None) -> list[str]:
    """The providers asked for (default: TRT, CUDA, CPU), in that order, minus those this build lacks."""
    have = set(available_providers())
    wanted = list(asked) if asked else list(DEFAULT_PROVIDERS)
    kept = [p for p in wanted if p in have]
    if not kept:
        raise BackendUnavailable(f"none of the providers {wanted} is available (this build has {sorted(have)})")
    return kept


def gpu_available() -> bool:
    """True when this ORT build has a GPU provider. A build with CUDA EP but no driver still
    reports it; the provider read back after the session starts is the truth."""
    have = set(available_providers())
    return any(p in have for p in GPU_PROVIDERS)


def session_options(threads: int | None = None):
    """The runtime's ORT session options: quiet, `threads` intra-op threads (None: ORT's default),
    and no spin-waiting.

    Why no spinning: ORT's pool threads spin-wait after each run by default. On a device that burns
    a core the host app (a camera pipeline) needs, and the spinning pool of one session steals the
    cores of another (the INT8 primary and the FP32 re-run): measured at 2 threads, a tile took
    31 ms instead of 14 beside an idle spinning session. Alone, off cost no more than the
    run-to-run noise (batch 8, 2 threads, three alternating runs: FP32 10.4-14.0 vs 10.1-11.3 ms
    per tile spinning): a tile batch is a few large ops, not thousands of small ones.
    """
    opts = _ort().SessionOptions()
    opts.log_severity_level = 3  # warnings about unused initializers are noise to a user
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def _meta(session, key: str) -> str | None:
    """A value of an ORT session's model metadata; None where unset, or for an object with ORT's run()
    but no model metadata (the GPU script's torch stand-in session)."""
    meta = getattr(session, "get_modelmeta", None)
    return None if meta is None else meta().custom_metadata_map.get(key)


def input_format(session) -> str:
    """An ORT session's model input format: tiling.FORMAT_KEY in the model's metadata, else NORMALIZED
    (also for a session without metadata: the contract's input). ValueError for a format this runtime
    does not know."""
    return tiling.check_format(_meta(session, tiling.FORMAT_KEY))


def session_input(session, tiles: np.ndarray) -> np.ndarray:
    """uint8 tiles [N, T, T, 3] as `session`'s model takes them (its input_format)."""
    return tiling.prepare(tiles, input_format(session))


def session_dct(session) -> tuple[int, int] | None:
    """The compression-history stream an ORT session's model declares (tiling.DCT_KEY), or None."""
    return tiling.parse_dct(_meta(session, tiling.DCT_KEY))


def session_layout(session) -> str:
    """The stream layout an ORT session's model declares (tiling.DCT_LAYOUT_KEY; unset: DCT_NCHW)."""
    return tiling.check_layout(_meta(session, tiling.DCT_LAYOUT_KEY))


def session_feeds(session, tiles: np.ndarray, tables: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every input of `session`'s model for uint8 tiles (and their files' luma tables), by name."""
    names = [i.name for i in session.get_inputs()]
    feeds = {names[0]: session_input(session, tiles)}
    feeds.update(tiling.extra_inputs(tiles, tables, session_dct(session), input_format(session),
                                     session_layout(session)))
    return feeds


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, precision: str, tile: int, *,
                 providers: Sequence[str] | None = None, input_name: str | None = None,
                 threads: int | None = None):
        ort = _ort()
        self.precision = precision
        self.tile = tile
        self.path = Path(path)
        opts = session_options(threads)
        provs = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=provs)
        except Exception as e:  # ORT raises its own exception classes for bad files
            raise BackendUnavailable(f"onnxruntime could not load {self.path.name}: "
                                     f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        used = self.session.get_providers()
        self.provider = used[0] if used else "?"
        self.concurrent = self.provider == "CPUExecutionProvider"
        if self.provider != provs[0]:
            log.info("%s: asked for %s, onnxruntime runs it on %s", self.path.name, provs[0], self.provider)
        inputs = self.session.get_inputs()
        try:
            self.input_format = input_format(self.session)
            self.dct = session_dct(self.session)
            self.dct_layout = session_layout(self.session)
        except ValueError as e:
            raise BackendUnavailable(f"{self.path.name}: {e}") from None
        self.extra = tiling.extra_names(self.input_format, self.dct)
        names = [i.name for i in inputs]
        if tuple(names[1:]) != self.extra:
            raise BackendUnavailable(f"{self.path.name}: expected inputs {['image', *self.extra]}, found {names}")
        self.input_name = inputs[0].name
        self._dtype = tiling.input_dtype(self.input_format)
        self._extra_dtype = {"qtable": np.float32, "dct": tiling.dct_dtype(self.dct_layout)}
        if input_name and input_name != self.input_name:
            log.warning("%s: input is named %r, the manifest says %r", self.path.name, self.input_name, input_name)
        outs = [o.name for o in self.session.get_outputs()]
        # the contract names the outputs; fall back to their order for files that predate the names
        self.outputs = ["fake_logit", "mask_logits"] if {"fake_logit", "mask_logits"} <= set(outs) else outs[:2]
        if len(self.outputs) != 2:
            raise BackendUnavailable(f"{self.path.name}: expected outputs fake_logit and mask_logits, found {outs}")

    def run(self, batch: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self._dtype is np.uint8 and batch.dtype != np.uint8:
            # a float batch cast to uint8 would wrap silently: the caller prepared the wrong format
            raise ValueError(f"{self.path.name} takes {self.input_format} (uint8 pixels), got a {batch.dtype} batch: "
                             "prepare tiles with tiling.prepare(tiles, backend.input_format) or use run_tiles")
        x = np.ascontiguousarray(batch, dtype=self._dtype)
        feeds = {self.input_name: x}
        if self.extra:
            if not extra or any(k not in extra for k in self.extra):
                raise ValueError(f"{self.path.name} also takes {', '.join(self.extra)}: "
                                 "make them with tiling.extra_inputs or use run_tiles")
            for k in self.extra:
                v = extra[k]
                if k == "dct" and self.dct_layout == tiling.DCT_NHWC and v.dtype != np.uint8:
                    # a float stream cast to uint8 would be silently wrong if it came channels-first
                    raise ValueError(f"{self.path.name} takes the DCT stream as uint8 channels-last "
                                     f"({tiling.DCT_NHWC}), got {v.dtype}: make it with tiling.extra_inputs(..., "
                                     "layout=backend.dct_layout)")
                feeds[k] = np.ascontiguousarray(v, dtype=self._extra_dtype[k])
        fake, mask = self.session.run(self.outputs, feeds)
        return check_outputs(fake, mask, x.shape[0], self.tile)
