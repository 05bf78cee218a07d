"""PyTorch backend: the FP32 student checkpoint itself (defaker_edge.student.load_student).

Only for machines that have torch (a build box, a GPU server). It needs a student directory
(config.json + model.safetensors): the package ONNX cannot be turned back into a torch module
without extra converters, so this path runs the checkpoint the package was made from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import tiling
from .base import Backend, BackendUnavailable, check_outputs


class TorchBackend(Backend):
    name = "torch"
    precision = "fp32"

    def __init__(self, student_dir: str | os.PathLike, tile: int, device: str | None = None):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("torch is not installed (backend='torch' needs the build extra)") from None
        try:
            from ...student import load_student
        except ImportError as e:
            raise BackendUnavailable(f"defaker_edge.student is not available ({e})") from None
        d = Path(student_dir)
        if not (d / "config.json").is_file():
            raise BackendUnavailable(f"{d}: not a student directory (no config.json)")
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, _cfg = load_student(d)
        self.model = model.to(self.device).eval().float()
        s = getattr(model, "dct", None)
        self.dct = (int(s.freqs), int(s.clip)) if s is not None else None
        self.provider = f"torch {torch.__version__} {self.device}"
        self.tile = tile

    def run(self, batch: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            more = [torch.from_numpy(np.ascontiguousarray(extra[k], dtype=np.float32)).to(self.device)
                    for k in tiling.EXTRA_INPUTS] if self.dct else []
            fake, mask = self.model(x, *more)
            return check_outputs(fake.float().cpu().numpy(), mask.float().cpu().numpy(), x.shape[0], self.tile)
