"""The compact student: an INT8-friendly CNN (conv-BN-ReLU, no LayerNorm or softmax in the hot path).

Stem: fixed SRM high-pass filters (noise residuals, where splicing and resampling traces live)
concatenated with a learned conv on RGB, both at stride 2. Encoder: 4 stages (strides 4..32) of a
strided conv then inverted-residual blocks (1x1 expand, 3x3 depthwise, 1x1 project; cheap per
pixel, which is what keeps a 512 tile near 0.5 GMAC). Decoder: an FPN summed at stride 4 -> mask.
Image logit: a linear layer over pooled deepest features and pooled mask logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import StudentConfig
from .spec import PruneGroup, PruneSpec


def _srm_kernels() -> torch.Tensor:
    """Three classic SRM residual filters (5x5): KV (3rd order), KB (2nd order 2-D), and 2nd-order 1-D."""
    kv = torch.tensor([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2],
                       [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]], dtype=torch.float32) / 12.0
    kb = torch.zeros(5, 5)
    kb[1:4, 1:4] = torch.tensor([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], dtype=torch.float32) / 4.0
    k1 = torch.zeros(5, 5)
    k1[2, 1:4] = torch.tensor([1, -2, 1], dtype=torch.float32) / 2.0
    return torch.stack([kv, kb, k1])  # [3, 5, 5]


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, width: int, mid: int):
        super().__init__()
        self.expand = ConvBN(width, mid, 1)
        self.dw = ConvBN(mid, mid, 3, groups=mid)
        self.proj = ConvBN(mid, width, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.dw(self.expand(x)))


class Stage(nn.Module):
    def __init__(self, cin: int, width: int, mids: list[int]):
        super().__init__()
        self.down = ConvBN(cin, width, 3, stride=2)
        self.blocks = nn.Sequential(*[InvertedResidual(width, m) for m in mids])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


N_SRM = 9  # 3 filters x 3 colour channels


def _dense_srm(grouped: torch.Tensor | None = None) -> torch.Tensor:
    """[9, 3, 5, 5]: output channel 3c+k applies filter k to colour channel c only."""
    g = _srm_kernels().repeat(3, 1, 1).unsqueeze(1) if grouped is None else grouped  # [9, 1, 5, 5]
    w = torch.zeros(N_SRM, 3, 5, 5, dtype=g.dtype)
    for o in range(N_SRM):
        w[o, o // 3] = g[o, 0]
    return w


class CompactStudent(nn.Module):
    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.rgb = ConvBN(3, cfg.stem_rgb, 3, stride=2)
        # fixed filters, one set per colour channel; not trained (requires_grad False), but kept in
        # the state dict so the exported graph and the checkpoint are self-contained. Stored as a
        # dense 3->9 conv with zeros across channels rather than groups=3: the same numbers, but
        # ONNX Runtime's CPU kernels run the dense form 2x faster (grouped 6.3 ms vs dense 3.0 ms
        # at 512 px, 2 threads, this project's 2-core Xeon), and it was a third of the whole tile.
        self.srm = nn.Conv2d(3, N_SRM, 5, 2, 2, bias=False)
        self.srm.weight.data.copy_(_dense_srm())
        self.srm.weight.requires_grad_(False)
        self.srm_bn = nn.BatchNorm2d(N_SRM)  # residuals are tiny; a learned scale brings them up
        cins = [cfg.stem_rgb + N_SRM] + cfg.widths[:-1]
        self.stages = nn.ModuleList([Stage(c, w, m) for c, w, m in zip(cins, cfg.widths, cfg.mids)])
        self.lat = nn.ModuleList([ConvBN(w, cfg.dec, 1, relu=False) for w in cfg.widths])
        self.smooth = ConvBN(cfg.dec, cfg.dec2, 3)
        self.mask_head = nn.Conv2d(cfg.dec2, 1, 1)
        self.cls = nn.Linear(2 * cfg.widths[-1] + 2, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the SRM conv became dense hold it grouped, [9, 1, 5, 5]
        k = prefix + "srm.weight"
        if k in state_dict and state_dict[k].shape[1] == 1:
            state_dict[k] = _dense_srm(state_dict[k])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.rgb(x), self.srm_bn(self.srm(x))], 1)
        feats = []
        for st in self.stages:
            h = st(h)
            feats.append(h)
        p = self.lat[3](feats[3])
        for i in (2, 1, 0):
            p = self.lat[i](feats[i]) + F.interpolate(p, scale_factor=2.0, mode="nearest")
        mask = self.mask_head(self.smooth(p))
        top = feats[3]
        pooled = torch.cat([top.mean((2, 3)), top.amax((2, 3)), mask.amax((2, 3)), mask.mean((2, 3))], 1)
        return self.cls(pooled).squeeze(1), mask

    # ---- pruning interface (see spec.py) ----
    def prune_spec(self) -> PruneSpec:
        cfg = self.cfg
        groups = [PruneGroup("stem", cfg.stem_rgb, [("rgb.0", 0, 0), ("rgb.1", 0, 0), ("stages.0.down.0", 1, 0)],
                             ["rgb.1"], min_keep=4)]
        blocks: list[tuple[str, int]] = []
        for s, (w, mids) in enumerate(zip(cfg.widths, cfg.mids)):
            pre = f"stages.{s}"
            members = [(f"{pre}.down.0", 0, 0), (f"{pre}.down.1", 0, 0), (f"lat.{s}.0", 1, 0)]
            points = [f"{pre}.down.1"]
            if s < 3:
                members.append((f"stages.{s + 1}.down.0", 1, 0))
            else:
                members += [("cls", 1, 0), ("cls", 1, w)]
            for b, m in enumerate(mids):
                bp = f"{pre}.blocks.{b}"
                members += [(f"{bp}.expand.0", 1, 0), (f"{bp}.proj.0", 0, 0), (f"{bp}.proj.1", 0, 0)]
                points.append(f"{bp}.proj.1")
                groups.append(PruneGroup(f"s{s}b{b}", m, [(f"{bp}.expand.0", 0, 0), (f"{bp}.expand.1", 0, 0),
                                                          (f"{bp}.dw.0", 0, 0), (f"{bp}.dw.1", 0, 0),
                                                          (f"{bp}.proj.0", 1, 0)],
                                         [f"{bp}.expand.1", f"{bp}.dw.1"], min_keep=8, block=(f"{pre}.blocks", b)))
                blocks.append((f"{pre}.blocks", b))
            groups.append(PruneGroup(f"s{s}", w, members, points, min_keep=8))
        groups += decoder_groups(4, cfg.dec, cfg.dec2)
        # LoRA on dense convs and the head; depthwise convs are left out (peft cannot merge grouped convs)
        targets = [n for n, m in self.named_modules()
                   if (isinstance(m, nn.Conv2d) and m.groups == 1 and m is not self.srm) or isinstance(m, nn.Linear)]
        return PruneSpec(groups, blocks, targets)

    @staticmethod
    def pruned_config(cfg: StudentConfig, keep: dict[str, int], dropped: set[tuple[str, int]]) -> StudentConfig:
        new = shrink_config(cfg, keep, dropped)
        new.stem_rgb = keep.get("stem", cfg.stem_rgb)
        return new


def decoder_groups(n_stages: int, dec: int, dec2: int, align: int = 1) -> list[PruneGroup]:
    """The FPN decoder's two prunable groups, shared by both compact archs: the lateral width `dec`
    (every lateral conv's outputs, the smooth conv's inputs) and the smooth width `dec2`."""
    lat = [m for s in range(n_stages) for m in ((f"lat.{s}.0", 0, 0), (f"lat.{s}.1", 0, 0))]
    return [PruneGroup("dec", dec, lat + [("smooth.0", 1, 0)], [f"lat.{s}.1" for s in range(n_stages)],
                       min_keep=8, align=align),
            PruneGroup("dec2", dec2, [("smooth.0", 0, 0), ("smooth.1", 0, 0), ("mask_head", 1, 0)], ["smooth.1"],
                       min_keep=8, align=align)]


def shrink_config(cfg: StudentConfig, keep: dict[str, int], dropped: set[tuple[str, int]]) -> StudentConfig:
    """cfg with the kept widths (groups s{i}), block mids (s{i}b{j}, dropped blocks removed) and decoder."""
    import copy

    new = copy.deepcopy(cfg)
    new.widths = [keep.get(f"s{s}", w) for s, w in enumerate(cfg.widths)]
    new.mids = [[keep.get(f"s{s}b{b}", m) for b, m in enumerate(mids) if (f"stages.{s}.blocks", b) not in dropped]
                for s, mids in enumerate(cfg.mids)]
    new.dec = keep.get("dec", cfg.dec)
    new.dec2 = keep.get("dec2", cfg.dec2)
    return new
