"""StudentConfig: every dimension a student is built from, so a pruned student rebuilds without peft.

Two families (DESIGN §4):
- `compact`: conv-BN-ReLU CNN with a noise-residual stem and an FPN decoder (INT8-friendly), in
  two archs: `block` (JPEG-block stem with zero-sum filters, dense 3x3 residual stages; the
  default, fast in INT8) and `inverted` (SRM stem, MobileNet-style inverted residuals; fewer MACs,
  but no faster in INT8 than FP32 on CPUs).
- `pruned-teacher`: an InternViT-style ViT (the teacher's vision tower, same weight names as
  transformers' InternVLVisionModel) plus a SAM2-style two-way-transformer mask decoder.
Per-block lists (`mids`, `heads`, `mlp`) are what pruning shrinks; their lengths are the depths.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ArtifactError, DefakerError

FORMAT = "defaker-student/1"
FAMILIES = ("compact", "pruned-teacher")
MEAN = (0.485, 0.456, 0.406)  # ImageNet, as runtime.tiling.normalize
STD = (0.229, 0.224, 0.225)


@dataclass
class StudentConfig:
    family: str = "compact"
    preset: str = "compact"
    tile: int = 512
    mask_stride: int = 4
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    # compact: `arch` "inverted": learned RGB stem channels, residual-stream width per stage
    # (strides 4, 8, 16, 32), expanded channels of each inverted-residual block (one list per
    # stage), decoder channels. `arch` "block": widths/mids of 3 stages (strides 8, 16, 32), the
    # first `stem_hp` stem filters zero-sum (high-pass), decoder channels; stem_rgb unused.
    arch: str = "inverted"
    stem_hp: int = 16
    res_clip: float = 0.0  # block: > 0 adds the fixed residual front end, truncated at +-res_clip grey levels
    stem_rgb: int = 15
    # block: the compression-history stream (block.DCTStream) when dct_freqs > 0: the first
    # dct_freqs zigzag AC coefficients of each 8x8 luma block, |round(DCT / q)| clipped at dct_clip,
    # one-hot, into dct_width channels added to the stem's. The model then takes (x, dct, qtable).
    dct_freqs: int = 0
    dct_clip: int = 10
    dct_width: int = 48
    widths: list[int] = field(default_factory=lambda: [24, 40, 64, 96])
    mids: list[list[int]] = field(default_factory=lambda: [[48], [80], [128, 128], [192]])
    dec: int = 32
    dec2: int = 24
    # pruned-teacher: ViT dims (per-layer heads and MLP widths) and the mask decoder's.
    patch: int = 16
    dim: int = 192
    head_dim: int = 64
    heads: list[int] = field(default_factory=lambda: [3] * 6)
    mlp: list[int] = field(default_factory=lambda: [768] * 6)
    layer_scale: float = 0.1
    dec_dim: int = 64
    dec_depth: int = 2
    dec_heads: int = 2
    # provenance: where the vision tower was initialised from, and what pruning did
    init_from: str | None = None
    pruned: dict[str, Any] | None = None

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "StudentConfig":
        if name not in PRESETS:
            raise DefakerError(f"unknown student preset {name!r}; choose one of: {', '.join(PRESETS)}")
        cfg = copy.deepcopy(PRESETS[name])
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise DefakerError(f"StudentConfig has no field {k!r}")
            setattr(cfg, k, v)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise DefakerError(f"unknown student family {self.family!r} ({', '.join(FAMILIES)})")
        if self.mask_stride != 4:
            raise DefakerError("mask_stride must be 4 (the student contract)")
        if self.family == "compact":
            if self.tile % 32:
                raise DefakerError(f"compact students need a tile divisible by 32, got {self.tile}")
            if self.arch not in ("inverted", "block"):
                raise DefakerError(f"unknown compact arch {self.arch!r} (inverted, block)")
            if self.arch == "block":
                if len(self.widths) != 3 or len(self.mids) != 3:
                    raise DefakerError("block students have 3 stages (widths and mids of length 3)")
                if not 0 <= self.dct_freqs <= 63 or not 1 <= self.dct_clip <= 127:
                    raise DefakerError(f"dct_freqs must be in 0..63 and dct_clip in 1..127, got "
                                       f"{self.dct_freqs} and {self.dct_clip}")
            elif len(self.widths) != 4 or len(self.mids) != 4:
                raise DefakerError("compact students have 4 stages (widths and mids of length 4)")
        else:
            if self.tile % self.patch or (self.tile // self.patch) * 4 != self.tile // self.mask_stride:
                raise DefakerError(f"pruned-teacher needs tile/patch*4 == tile/4 (patch 16), got patch {self.patch}")
            if len(self.heads) != len(self.mlp):
                raise DefakerError("heads and mlp must list one entry per layer")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["format"] = FORMAT
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudentConfig":
        if d.get("format") != FORMAT:
            raise ArtifactError(f"student config has format {d.get('format')!r}, expected {FORMAT!r}")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(kw[k])
        cfg = cls(**kw)
        cfg.validate()
        return cfg


def _compact(preset: str, stem: int, widths: list[int], mids: list[list[int]], dec: int, dec2: int) -> StudentConfig:
    return StudentConfig(family="compact", preset=preset, stem_rgb=stem, widths=widths, mids=mids, dec=dec, dec2=dec2)


def _block(preset: str, widths: list[int], mids: list[list[int]], dec: int, dec2: int, hp: int,
           dct: int = 0, dct_width: int = 48) -> StudentConfig:
    # res_clip 3: the truncated noise-residual front end (block.ResidualFront). On the same 600
    # training steps it raised held-out pixel AUC from 0.65 to 0.75 over the plain block stem.
    return StudentConfig(family="compact", preset=preset, arch="block", widths=widths, mids=mids, dec=dec,
                         dec2=dec2, stem_hp=hp, res_clip=3.0, dct_freqs=dct, dct_width=dct_width)


def _vit(preset: str, dim: int, depth: int, heads: int, mlp: int, dec_dim: int) -> StudentConfig:
    return StudentConfig(family="pruned-teacher", preset=preset, dim=dim, head_dim=dim // heads,
                         heads=[heads] * depth, mlp=[mlp] * depth, dec_dim=dec_dim)


PRESETS: dict[str, StudentConfig] = {
    # compact-s: for tests and very small devices; compact: the default (<= ~1 GFLOP per 512 tile);
    # compact-l: more capacity where a GPU/NPU runs it.
    "compact-s": _compact("compact-s", 7, [16, 24, 40, 64], [[32], [48], [80], [128]], 16, 16),
    "compact": _compact("compact", 15, [24, 40, 64, 96], [[48], [80], [128, 128], [192]], 32, 24),
    "compact-l": _compact("compact-l", 23, [32, 56, 96, 160], [[64, 64], [112, 112], [192, 192, 192], [320, 320]], 48, 32),
    # block: the default edge student (INT8-friendly dense stages; see student/block.py).
    # block-s for tests and microcontroller-class budgets; block-l where an NPU/GPU runs it.
    "block-s": _block("block-s", [16, 32, 48], [[16], [32], [48]], 16, 16, 8),
    "block": _block("block", [48, 96, 128], [[48], [96], [128]], 48, 32, 16),
    "block-l": _block("block-l", [64, 128, 192], [[64, 64], [128, 128], [192]], 64, 48, 24),
    # block + the compression-history stream (DCT coefficients and the file's quantization table):
    # the default since the real-photo data (README, "Compression history")
    "block-dct-s": _block("block-dct-s", [16, 32, 48], [[16], [32], [48]], 16, 16, 8, dct=8, dct_width=16),
    # block-dct without the stream: the residual-only arm of the ablation (README)
    "block-res": _block("block-res", [32, 64, 96], [[32, 32], [64], [96]], 32, 24, 16),
    "block-dct": _block("block-dct", [32, 64, 96], [[32, 32], [64], [96]], 32, 24, 16, dct=24, dct_width=32),
    # pruned-teacher students: the tiny one for tests; the others are InternViT-shaped towers that a
    # teacher checkpoint initialises (dims then come from the checkpoint) before LoRA pruning.
    "pruned-teacher-tiny": _vit("pruned-teacher-tiny", 64, 2, 2, 128, 32),
    "pruned-teacher-s": _vit("pruned-teacher-s", 192, 6, 3, 768, 64),
    "pruned-teacher": _vit("pruned-teacher", 384, 12, 6, 1536, 128),
    "pruned-teacher-300m": _vit("pruned-teacher-300m", 1024, 24, 16, 4096, 256),
}
