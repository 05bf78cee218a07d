"""Physically slice a student: keep the chosen channels/heads of every group, drop whole blocks.

Works on state dicts with a family's PruneSpec (student/spec.py), so the result loads strictly
into `build_student(pruned_config)`: a smaller model with no masks and no peft.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from ..student.spec import PruneSpec


def slice_state(state: dict[str, torch.Tensor], spec: PruneSpec, keep: dict[str, list[int]],
                dropped: set[tuple[str, int]]) -> dict[str, torch.Tensor]:
    removed: dict[tuple[str, int], set[int]] = defaultdict(set)
    for g in spec.groups:
        if g.block in dropped:
            continue
        kept = set(keep.get(g.name, range(g.size)))
        for e in range(g.size):
            if e in kept:
                continue
            for mod, axis, start in g.members:
                removed[(mod, axis)].update(range(start + e * g.unit, start + (e + 1) * g.unit))
    renumber = _renumbering(spec, dropped)
    out = {}
    for key, v in state.items():
        mod, _, pname = key.rpartition(".")
        new_key = _rename(key, renumber)
        if new_key is None:
            continue
        for axis in (0, 1):
            r = removed.get((mod, axis))
            if not r or v.dim() <= axis or (axis == 1 and pname != "weight"):
                continue
            idx = torch.tensor([i for i in range(v.shape[axis]) if i not in r], dtype=torch.long)
            v = v.index_select(axis, idx)
        out[new_key] = v.contiguous()
    return out


def _renumbering(spec: PruneSpec, dropped: set[tuple[str, int]]) -> dict[str, dict[int, int | None]]:
    by_prefix: dict[str, list[int]] = defaultdict(list)
    for prefix, i in spec.blocks:
        by_prefix[prefix].append(i)
    table: dict[str, dict[int, int | None]] = {}
    for prefix, idxs in by_prefix.items():
        new, m = 0, {}
        for i in sorted(idxs):
            if (prefix, i) in dropped:
                m[i] = None
            else:
                m[i] = new
                new += 1
        table[prefix] = m
    return table


def _rename(key: str, table: dict[str, dict[int, int | None]]) -> str | None:
    for prefix, m in table.items():
        mt = re.match(re.escape(prefix) + r"\.(\d+)\.(.*)$", key)
        if mt:
            j = m.get(int(mt.group(1)), int(mt.group(1)))
            return None if j is None else f"{prefix}.{j}.{mt.group(2)}"
    return key
