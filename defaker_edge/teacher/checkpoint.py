"""Teacher checkpoints: our format and Sa2VA's hub layout.

Ours (`config.json` with format "defaker-teacher/1"): the TeacherConfig, `model.safetensors` with
the native module names (vlm.*, sam2.*, text_hidden_fcs.*), and the tokenizer files.
Sa2VA (`config.json` with model_type "sa2va_chat"): see sa2va.py for the key map. Anything
missing, partial or mismatched raises ArtifactError naming the keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..artifacts import read_json, tool_versions, utc_now, write_json
from ..errors import ArtifactError
from .config import FORMAT, TeacherConfig

log = logging.getLogger(__name__)
_MAX_LISTED = 12


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def native_state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def load_state_strict(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model`; every key must be present, expected and of the right shape."""
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in set(own) & set(state)
           if tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if bad:
        problems.append(f"{len(bad)} shape mismatch(es): {_listing(bad)}")
    if problems:
        raise ArtifactError(f"{source}: checkpoint does not match the model: " + "; ".join(problems))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(v.dtype))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or shards listed in model.safetensors.index.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = [path / "model.safetensors"]
    if not files[0].is_file() and index.is_file():
        files = sorted({path / f for f in read_json(index).get("weight_map", {}).values()})
    out: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise ArtifactError(f"{f}: missing (need model.safetensors or the shards its index lists)")
        try:
            out.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise ArtifactError(f"{f}: unreadable safetensors ({e})") from None
    return out


def save_checkpoint(model, path, *, dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu()
             for k, v in native_state_dict(model).items()}
    tmp = path / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(path / "model.safetensors")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(path))
    cfg = {"format": FORMAT, "model_type": "defakerone", "config": model.cfg.to_json(),
           "dtype": str(dtype or model.dtype).replace("torch.", ""), "created": utc_now(), "tools": tool_versions()}
    cfg.update(extra or {})
    write_json(path / "config.json", cfg)


def load_checkpoint(path, device: str = "cpu"):
    from .model import DeFakerOneTeacher
    from .prompt import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: teacher checkpoint directory not found")
    meta = read_json(path / "config.json")
    if meta.get("model_type") == "sa2va_chat":
        from .sa2va import load_sa2va

        return load_sa2va(path, meta, device=device)
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path}/config.json: not a teacher checkpoint (format {meta.get('format')!r}, "
                            f"model_type {meta.get('model_type')!r}; expected {FORMAT!r} or 'sa2va_chat')")
    if "config" not in meta:
        raise ArtifactError(f"{path}/config.json: no 'config' section")
    cfg = TeacherConfig.from_json(meta["config"])
    if not (path / "tokenizer.json").is_file():
        raise ArtifactError(f"{path}: tokenizer.json missing (the tokenizer is saved with the checkpoint)")
    tok = load_tokenizer(path)
    state = read_safetensors(path)
    model = DeFakerOneTeacher(cfg, tok)
    load_state_strict(model, state, str(path))
    return model.float().to(device).eval()
