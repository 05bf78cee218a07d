"""A stand-in teacher at no extra training cost: a snapshot ensemble of students, with test-time flips.

Until DeFakerOne's weights can be loaded, the teacher the edge student is distilled from has to come
from what this project trains. The training program keeps every held-out-scored checkpoint
(`models/program/snapshots/`, float16); averaging their logits, and those of each tile mirrored left to
right, is a teacher that costs only inference. It has the student's contract (image, dct, qtable) ->
(fake_logit, mask_logits), so the held-out scoring, the teacher cache and distillation take it as
they take a student.

Why the mirror is exact for the compression stream: a tile mirrored left to right keeps its 8x8 grid
(T is a multiple of 8), and each block's DCT coefficient (u, v) only changes sign for odd horizontal
frequencies; the stream is |round(DCT / q)|, so the mirrored tile's stream is the stream mirrored.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ArtifactError


class SnapshotEnsemble(nn.Module):
    """Mean of the members' (fake_logit, mask_logits), each also run on the mirrored tile when `flip`."""

    def __init__(self, members: list[nn.Module], flip: bool = True):
        super().__init__()
        if not members:
            raise ArtifactError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.flip = flip
        first = members[0]
        self.cfg = first.cfg  # tile, for the scorers
        self.dct = getattr(first, "dct", None)  # the stream's (freqs, clip), for the input builders
        self.input_names = tuple(getattr(first, "input_names", ("image",)))

    def forward(self, x: torch.Tensor, *extra: torch.Tensor):
        logits, masks = [], []
        for m in self.members:
            lo, mo = m(x, *extra)
            logits.append(lo)
            masks.append(mo)
            if self.flip:  # dct [B, F, T/8, T/8] mirrors with the tile; the table does not move
                ex = [e.flip(-1) if e.dim() == 4 else e for e in extra]
                lo, mo = m(x.flip(-1), *ex)
                logits.append(lo)
                masks.append(mo.flip(-1))
        return torch.stack(logits).mean(0), torch.stack(masks).mean(0)


def load_member(spec: str, config_dir: str | None = None) -> nn.Module:
    """A student dir (config.json + model.safetensors), or a snapshot .safetensors whose architecture is
    `config_dir`'s (the program's snapshots share models/program/student's config)."""
    from safetensors.torch import load_file

    from ..artifacts import read_json
    from ..student import StudentConfig, build_student
    from ..student.io import load_student

    p = Path(spec)
    if p.is_dir():
        return load_student(p)[0]
    if p.suffix != ".safetensors" or not p.is_file():
        raise ArtifactError(f"{spec}: neither a student dir nor a .safetensors snapshot")
    cdir = Path(config_dir) if config_dir else p.parent.parent / "student"
    if not (cdir / "config.json").is_file():
        raise ArtifactError(f"{spec}: no config.json for its architecture in {cdir} (give --config DIR)")
    cfg = StudentConfig.from_dict(read_json(cdir / "config.json"))
    cfg.init_from = None
    model = build_student(cfg)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(p)).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{spec}: weights do not match {cdir / 'config.json'} ({str(e).splitlines()[0]})") from None
    return model.eval()


def build_ensemble(specs: list[str], flip: bool = True, config_dir: str | None = None) -> SnapshotEnsemble:
    members = [load_member(s, config_dir) for s in specs]
    tiles = {m.cfg.tile for m in members}
    if len(tiles) > 1:
        raise ArtifactError(f"ensemble members disagree on the tile: {sorted(tiles)}")
    return SnapshotEnsemble(members, flip=flip).eval()
