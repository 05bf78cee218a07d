"""The one interface every backend implements (TensorRT, ONNX Runtime, PyTorch).

A backend takes a batch in its `input_format` (tiling.prepare makes it from uint8 tiles; the
contract's normalized float32 [N, 3, T, T] unless the model file says otherwise) and returns
float32 (fake_logit [N], mask_logits [N, 1, T/4, T/4]). It says what it is (`name`), at which precision it runs
(`precision`) and which provider actually executed it (`provider`): ORT, for one, falls back to
the CPU silently, so the caller must be told rather than assume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ...errors import DefakerError
from .. import tiling


class BackendUnavailable(DefakerError):
    """This backend cannot run here (library missing, incompatible engine, ...). `reason` is short."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Backend(ABC):
    name: str = "?"
    precision: str = "?"
    provider: str = "?"
    max_batch: int | None = None  # None: any batch size
    # run() may be called from several threads at once (ORT sessions on the CPU: each Run uses its
    # own intra-op threads); TensorRT's one execution context and fixed device buffers may not
    concurrent: bool = False
    # what run() takes (runtime.tiling: NORMALIZED, or RAW_S2D for the CPU INT8 model on raw pixels)
    input_format: str = tiling.NORMALIZED
    # the compression-history stream's (frequencies, clip) when the model takes (image, dct, qtable)
    dct: tuple[int, int] | None = None
    # how run() takes the stream: tiling.DCT_NCHW (float32 [N, F, T/8, T/8]) or DCT_NHWC (uint8 channels-last)
    dct_layout: str = tiling.DCT_NCHW

    @abstractmethod
    def run(self, batch: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A batch in input_format (+ the model's other inputs by name, tiling.extra_inputs) ->
        (fake_logit float32 [N], mask_logits float32 [N,1,T/4,T/4])."""

    def run_tiles(self, tiles: np.ndarray, tables: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 tiles [N,T,T,3] (+ their files' luma tables [N, 64], None: none) -> run() on them
        in this backend's input format."""
        return self.run(tiling.prepare(tiles, self.input_format),
                        tiling.extra_inputs(tiles, tables, self.dct, self.input_format, self.dct_layout))

    def close(self) -> None:  # release device memory; a no-op for host backends
        pass

    def describe(self) -> str:
        return f"{self.name}/{self.precision} on {self.provider}"


def check_outputs(fake: np.ndarray, mask: np.ndarray, n: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Coerce a backend's raw outputs to the contract's shapes and dtypes, or raise ValueError."""
    fake = np.asarray(fake, dtype=np.float32).reshape(-1)
    mask = np.asarray(mask, dtype=np.float32)
    if fake.shape[0] != n:
        raise ValueError(f"fake_logit has {fake.shape[0]} values for a batch of {n}")
    q = tile // 4
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.shape != (n, 1, q, q):
        raise ValueError(f"mask_logits shape {mask.shape}, expected {(n, 1, q, q)}")
    return fake, mask
