"""Initialise a pruned-teacher student's ViT from a teacher checkpoint's vision tower.

The teacher checkpoint (models/reference-teacher or any DeFakerOne dir) holds transformers-native
InternVL weights: keys `...vision_tower.embeddings.*` / `...vision_tower.encoder.layer.N.*`. Those
names are the student's own, so loading is a prefix strip plus two adaptations: the patch kernel
(14 px in InternViT) is resized to the student's patch (16 px, so a 512 tile gives the same 32x32
grid that 448/14 does), and position embeddings are interpolated if the grids differ.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ArtifactError


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise ArtifactError(f"{path}: no *.safetensors to take a vision tower from")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def vision_tower_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = _read_state(Path(path))
    out = {}
    for k, v in state.items():
        for marker in ("vision_tower.", "vision_model."):
            if marker in k:
                out[k.split(marker, 1)[1]] = v.float()
                break
    if not out:
        raise ArtifactError(f"{path}: no vision_tower.* weights found")
    return out


def teacher_vision_dims(path: str | os.PathLike) -> dict[str, int]:
    """dim, layers, mlp (from the weights) and heads (from config.json when it says, else dim/64)."""
    st = vision_tower_state(path)
    dim = st["embeddings.position_embeddings"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in st if k.startswith("encoder.layer."))
    mlp = st["encoder.layer.0.mlp.fc1.weight"].shape[0]
    heads = max(1, dim // 64)
    cfg_path = Path(path) / "config.json" if Path(path).is_dir() else None
    if cfg_path and cfg_path.is_file():
        def find(d):
            if isinstance(d, dict):
                if "num_attention_heads" in d and d.get("hidden_size") == dim:
                    return d["num_attention_heads"]
                for v in d.values():
                    r = find(v)
                    if r:
                        return r
            return None
        heads = find(json.loads(cfg_path.read_text())) or heads
    return {"dim": dim, "layers": layers, "mlp": mlp, "heads": int(heads)}


def load_vision_tower(model, path: str | os.PathLike) -> list[str]:
    """Copy the tower's weights into `model` (a PrunedTeacherStudent); returns the keys not found."""
    st = vision_tower_state(path)
    own = model.state_dict()
    new = {}
    for k, v in st.items():
        if k not in own:
            continue
        tgt = own[k]
        if k == "embeddings.patch_embeddings.projection.weight" and v.shape[1] > tgt.shape[1]:
            v = v[:, :tgt.shape[1]]  # a teacher with extra (high-pass) input planes: keep the RGB ones
        if k == "embeddings.patch_embeddings.projection.weight" and v.shape[-1] != tgt.shape[-1]:
            # resize the kernel; scaling by the area ratio keeps the response to smooth inputs
            v = F.interpolate(v, size=tgt.shape[-2:], mode="bilinear", align_corners=False)
            v = v * (st[k].shape[-1] * st[k].shape[-2]) / (tgt.shape[-1] * tgt.shape[-2])
        if k == "embeddings.position_embeddings" and v.shape != tgt.shape:
            cls, grid = v[:, :1], v[:, 1:]
            g0, g1 = int(round(grid.shape[1] ** 0.5)), int(round((tgt.shape[1] - 1) ** 0.5))
            grid = grid.reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(g1, g1), mode="bicubic", align_corners=False)
            v = torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, g1 * g1, -1)], 1)
        if v.shape != tgt.shape:
            raise ArtifactError(f"{path}: {k} is {tuple(v.shape)}, the student expects {tuple(tgt.shape)}")
        new[k] = v
    if not new:
        raise ArtifactError(f"{path}: vision tower keys are not transformers InternVL names "
                            "(a Sa2VA-layout checkpoint needs the teacher stage's key map first)")
    missing = [k for k in own if k.startswith(("embeddings.", "encoder.")) and k not in new]
    model.load_state_dict(new, strict=False)
    return missing
