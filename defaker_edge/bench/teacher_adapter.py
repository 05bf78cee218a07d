"""The teacher as the bench uses it: `predict(img_u8) -> TeacherOutput`, plus what it is (params, dtype).

Built on `defaker_edge.teacher.load_teacher(spec, device=...)` (docs/INTERFACES.md). The teacher
stage is written in parallel, so the few things not pinned there (a dtype argument, where the
nn.Module lives) are probed here and nowhere else.
"""

from __future__ import annotations

import inspect
from pathlib import Path

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _module_of(teacher):
    import torch

    if isinstance(teacher, torch.nn.Module):
        return teacher
    for name in ("model", "module", "net"):
        m = getattr(teacher, name, None)
        if isinstance(m, torch.nn.Module):
            return m
    return None


def load_teacher_for_bench(spec: str, *, device: str = "cpu", dtype: str = "fp32"):
    import torch

    try:
        from ..teacher import load_teacher
    except ImportError as e:
        raise RuntimeError(f"defaker_edge.teacher is not available ({e})") from None
    if dtype not in DTYPES:
        raise ValueError(f"teacher dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    tdtype = getattr(torch, DTYPES[dtype])
    params = inspect.signature(load_teacher).parameters
    kwargs = {"device": device}
    if "dtype" in params:
        kwargs["dtype"] = tdtype
    teacher = load_teacher(spec, **kwargs)
    mod = _module_of(teacher)
    if mod is not None and "dtype" not in params:
        mod.to(tdtype)
    if mod is not None:
        mod.eval()
    n_params = sum(p.numel() for p in mod.parameters()) if mod is not None else None
    n_bytes = sum(p.numel() * p.element_size() for p in mod.parameters()) if mod is not None else None
    is_dir = Path(spec).is_dir()
    info = {"teacher_spec": spec, "teacher_dtype": dtype, "params": n_params, "model_bytes": n_bytes,
            "model_bytes_source": "parameters in memory",
            "weights": "checkpoint" if is_dir else ("random" if spec in ("tiny", "defakerone-2b") else "preset")}
    return teacher, info


class TeacherPredictor:
    """The teacher behind the bench's predictor interface (`check(img) -> Prediction`).

    The teacher decides at 0.5 (DeFakerOne's own rule); its mask logits come at the input's size.
    """

    kind = "teacher"

    def __init__(self, spec: str, *, device: str = "cpu", dtype: str = "fp32"):
        self.teacher, self.info = load_teacher_for_bench(spec, device=device, dtype=dtype)

    def check(self, img, source=None):  # the teacher reads pixels only; `source` is the file
        import numpy as np
        import torch

        from .adapter import Prediction

        with torch.inference_mode():
            out = self.teacher.predict(img)
        logits = out.mask_logits.float().cpu().numpy() if hasattr(out.mask_logits, "cpu") else np.asarray(out.mask_logits)
        mask = (1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32)
        return Prediction(float(out.fake_prob), mask)
