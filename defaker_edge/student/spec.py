"""What a student family tells the pruner: which tensor slices belong together, and which blocks can go.

A `PruneGroup` is a set of channels (or attention heads, `unit` channels each) that must be kept or
removed together: every (module, axis, start) member is sliced at the same indices. Axis 0 slices
every tensor of the module (weight, bias, BN statistics); axis 1 slices only its weight (inputs).
`mask_points` are modules whose outputs carry the group's channels: multiplying them by a 0/1
mask is exactly what removing those channels does, so the pruner can try a pruning before slicing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PruneGroup:
    name: str
    size: int
    members: list[tuple[str, int, int]]  # (module name, axis, start index on that axis)
    mask_points: list[str]
    unit: int = 1
    min_keep: int = 1
    # kept counts are rounded up to a multiple of this: INT8 kernels pack channels in 4s/8s/16s,
    # and a 27-channel conv runs no faster than a 32-channel one on them
    align: int = 1
    block: tuple[str, int] | None = None  # the removable block this group lives in, if any


@dataclass
class PruneSpec:
    groups: list[PruneGroup]
    blocks: list[tuple[str, int]] = field(default_factory=list)  # (container prefix, index)
    lora_targets: list[str] = field(default_factory=list)  # Conv2d / Linear modules LoRA may adapt
