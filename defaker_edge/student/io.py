"""build_student / save_student / load_student: a student checkpoint is config.json + model.safetensors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..artifacts import read_json, tool_versions, utc_now, write_json
from ..errors import ArtifactError
from .config import StudentConfig


def build_student(cfg: StudentConfig) -> nn.Module:
    cfg.validate()
    if cfg.family == "compact" and cfg.arch == "block":
        from .block import BlockStudent

        return BlockStudent(cfg)
    if cfg.family == "compact":
        from .compact import CompactStudent

        return CompactStudent(cfg)
    from .pruned_teacher import PrunedTeacherStudent

    model = PrunedTeacherStudent(cfg)
    if cfg.init_from:
        from .teacher_init import load_vision_tower

        load_vision_tower(model, cfg.init_from)
    return model


def save_student(model: nn.Module, cfg: StudentConfig, out_dir: str | os.PathLike,
                 report: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write out_dir/config.json (+ report.json when given) and out_dir/model.safetensors."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "defaker-student/1"})
    os.replace(tmp, out / "model.safetensors")
    d = cfg.to_dict()
    d["created"] = utc_now()
    d["tools"] = tool_versions()
    if extra:
        d.update(extra)
    write_json(out / "config.json", d)
    if report is not None:
        write_json(out / "report.json", report)
    return out


def load_student(path: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, StudentConfig]:
    """Rebuild the model from config.json (sliced dims included: no peft needed) and load its weights."""
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
        raise ArtifactError(f"{p}: not a student checkpoint (needs config.json and model.safetensors)")
    cfg = StudentConfig.from_dict(read_json(p / "config.json"))
    cfg.init_from = None  # the weights below already hold whatever init_from gave
    model = build_student(cfg)
    state = load_file(str(p / "model.safetensors"), device=map_location)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{p}: weights do not match config.json ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, cfg


def export_onnx(model: nn.Module, tile: int, path: str | os.PathLike, opset: int = 17) -> Path:
    """The student as ONNX: input `image` [B,3,T,T], outputs `fake_logit` [B], `mask_logits` [B,1,T/4,T/4]."""
    from .inputs import dct_spec, dummy_inputs, input_names

    model = getattr(model, "module", model).eval()
    x = dummy_inputs(model, 1, tile)
    names = list(input_names(model))
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but is the one Q/DQ needs
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, x, str(path), dynamo=False, opset_version=opset,
                          input_names=names, output_names=["fake_logit", "mask_logits"],
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "fake_logit": {0: "batch"},
                                        "mask_logits": {0: "batch"}})
    spec = dct_spec(model)
    if spec is not None:  # the runtime prepares the stream's inputs by this (runtime.tiling.DCT_KEY)
        from ..export.onnx_export import set_metadata
        from ..runtime.tiling import DCT_KEY

        set_metadata(path, {DCT_KEY: f"{spec[0]},{spec[1]}"})
    return Path(path)
