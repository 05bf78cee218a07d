"""The block student (compact family, arch "block"): a JPEG-block stem and dense conv stages.

Why this shape, for edge CPUs and NPUs:
- Stem: one 8x8 conv at stride 8. Tiles start on the 8x8 JPEG grid, so each stem position sees
  exactly one JPEG block, the unit in which compression history (quantisation, double
  compression, misaligned grids) lives. The first `stem_hp` filters are constrained to sum to
  zero (Bayar & Stamm's constrained-conv idea): they cannot respond to a block's mean colour, only
  to its texture and noise residual, the forensic signal, while the others see content.
- Body: residual blocks of dense 3x3 convs (no depthwise) at 1/8, 1/16 and 1/32. Dense convs with
  32+ channels are where INT8 kernels (VNNI, DP4A, tensor cores) beat FP32; the depthwise,
  few-channel `inverted` arch ran no faster in INT8 than in FP32 on ONNX Runtime's CPU kernels.
- Decoder: FPN summed at 1/8, a 3x3 smooth, mask logits upsampled x2 to the contract's 1/4.
Image logit: a linear layer over pooled deepest features and pooled mask logits, as `inverted`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compact import ConvBN, decoder_groups, shrink_config
from .config import StudentConfig
from .spec import PruneGroup, PruneSpec

PATCH = 8


GREY = 1.0 / (255.0 * 0.226)  # one grey level in normalised units (ImageNet std ~0.226)


def _residual_kernels() -> torch.Tensor:
    """[3, 3, 3] high-pass filters: 2nd-order 2-D (SRM "KB"), and 2nd-order 1-D across and down."""
    kb = torch.tensor([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], dtype=torch.float32) / 4.0
    h = torch.zeros(3, 3)
    h[1] = torch.tensor([1.0, -2.0, 1.0]) / 2.0
    return torch.stack([kb, h, h.t().contiguous()])


class ResidualFront(nn.Module):
    """Fixed noise-residual filters per colour channel, then a truncation (TLU) at +-`clip` grey levels.

    Why the truncation: forgery traces (resampling, noise mismatch, recompression, generator
    checkerboards) are 0.5-3 grey levels, while edges give residuals of tens. Untruncated, a
    network learns edges (content) first and the traces drown; clipped to +-3 grey levels and
    scaled to +-1, the residual map is noise texture, and its range is fixed, which INT8 likes.

    Output (the fused layout, 12 channels in [-1, 1]): per colour channel c, its pass-through
    x_c / bound and its three residuals. Why fused: the first version concatenated the image
    beside its 9 residuals, and that Concat wrote and re-read a 12-channel full-resolution tensor,
    about a sixth of a tile's time on ORT CPU, precision-independent, so it diluted INT8's speedup.
    Now one grouped conv emits all 12 (the pass-through is a centre tap of 1 / bound, so
    |x_c / bound| <= 1 and the clip leaves it alone) and the stem's weight is permuted and scaled
    to match (BlockStem.forward's `order`): the same function to float rounding. `reference()`
    gives the old layout [image (3), residual (9)].
    """

    N = 9  # residual channels
    OUT = 12

    def __init__(self, clip: float, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        # the largest |value| a normalised [0, 1] image can take, with a little room for rounding
        self.bound = 1.001 * max(max(m / s, (1.0 - m) / s) for m, s in zip(mean, std))
        k = _residual_kernels().repeat(3, 1, 1).unsqueeze(1) / (clip * GREY)  # [9, 1, 3, 3]
        # groups=3: output 4c+i reads colour channel c only (grouped: measured in ORT CPU at 512 px,
        # 1 thread, 14 ms against 24 ms for the same filters as a dense conv with zeros across
        # channels, which multiplies the zeros too). A module call, so ONNX names the node
        # /front/conv/... and the quantize stage keeps it FP32 by name (full_precision_layers)
        self.conv = nn.Conv2d(3, self.OUT, 3, 1, 1, groups=3, bias=False)
        self.conv.weight.data.copy_(self._fuse(k))
        self.conv.weight.requires_grad_(False)
        # output 4c carries colour channel c (reference channel c) at gain 1/bound; 4c+1+j its
        # residual j (reference channel 3+3c+j) at gain 1
        self._idx = [i for c in range(3) for i in [c] + [3 + 3 * c + j for j in range(3)]]
        # a buffer (not saved): the stem divides its weight by it, and a tensor made while tracing
        # the export would be a TracerWarning
        self.register_buffer("gain", torch.tensor([1.0 / self.bound, 1.0, 1.0, 1.0] * 3), persistent=False)
        self._register_load_state_dict_pre_hook(self._from_older)

    def _fuse(self, w9: torch.Tensor) -> torch.Tensor:
        """[9, 1, 3, 3] residual filters (output 3c+j = filter j on channel c) -> the fused [12, 1, 3, 3]."""
        eye = torch.zeros(1, 1, 3, 3, dtype=w9.dtype)
        eye[0, 0, 1, 1] = 1.0 / self.bound
        return torch.cat([torch.cat([eye, w9[3 * c:3 * c + 3]]) for c in range(3)])

    def _from_older(self, state_dict, prefix, *args):
        # older students stored the 9 residual filters alone: grouped [9, 1, 3, 3], or before that
        # dense [9, 3, 3, 3] with zeros across channels. The same filters; add the pass-through
        k = prefix + "conv.weight"
        w = state_dict.get(k)
        if w is None or w.shape[0] != self.N:
            return
        if w.shape[1] == 3:
            w = torch.stack([w[o, o // 3] for o in range(w.shape[0])]).unsqueeze(1)
        state_dict[k] = self._fuse(w.to(torch.float32))

    def order(self) -> tuple[list[int], torch.Tensor]:
        """For output channel k: the reference-layout channel it carries, and its gain against it."""
        return self._idx, self.gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.conv(x), -1.0, 1.0)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The unfused layout [image (3), clip(residual) (9)]: for tests and reading the filters."""
        y = self.forward(x)
        out = torch.empty_like(y)
        out[:, self._idx] = y / self.gain.view(1, -1, 1, 1)
        return out


class BlockStem(nn.Module):
    """Conv(cin -> C, 8x8, stride 8) + BN + ReLU; channels where `hp` is 1 have zero-sum filters."""

    def __init__(self, cout: int, n_hp: int, cin: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, PATCH, PATCH, 0, bias=False)
        hp = torch.zeros(cout)
        hp[:n_hp] = 1.0
        # a buffer, so pruning slices it with the conv's output channels
        self.register_buffer("hp", hp)
        self.bn = nn.BatchNorm2d(cout)

    def weight(self) -> torch.Tensor:
        # zero-sum over the image's 3 channels only: residual channels (ResidualFront) are high-pass already
        w = self.conv.weight
        rgb = w[:, :3]
        rgb = rgb - self.hp.view(-1, 1, 1, 1) * rgb.mean((1, 2, 3), keepdim=True)
        return torch.cat([rgb, w[:, 3:]], 1) if self.conv.in_channels > 3 else rgb

    def forward(self, x: torch.Tensor, order: tuple[list[int], torch.Tensor] | None = None) -> torch.Tensor:
        # exported as a constant: ONNX sees one plain Conv with the projected weight. `order` maps
        # the input's channels onto the reference layout (ResidualFront.order): the weight's columns
        # are permuted and divided by each channel's gain, so the conv computes the same sums
        w = self.weight()
        if order is not None:
            idx, gain = order
            w = w[:, idx] / gain.to(w.dtype).view(1, -1, 1, 1)
        return F.relu(self.bn(F.conv2d(x, w, None, PATCH)))


class Residual(nn.Module):
    """x + BN(conv3x3(ReLU(BN(conv3x3(x))))): no activation after the sum, so a gate can drop it."""

    def __init__(self, width: int, mid: int):
        super().__init__()
        self.a = ConvBN(width, mid, 3)
        self.b = ConvBN(mid, width, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class BlockStage(nn.Module):
    def __init__(self, cin: int, width: int, mids: list[int], down: bool):
        super().__init__()
        self.down = ConvBN(cin, width, 3, stride=2) if down else nn.Identity()
        self.blocks = nn.Sequential(*[Residual(width, m) for m in mids])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class DCTStream(nn.Module):
    """The compression-history stream (CAT-Net / DTD style, sized for the edge), at the stem's 1/8.

    Input: `dct` [B, F, T/8, T/8], min(|round(DCT(Y) / q)|, clip) per block and AC frequency
    (runtime.dct.dct_stream, computed by the runtime in numpy), and `qtable` [B, 64], the file's luma
    table in natural order (all zeros: no table). Each coefficient is one-hot over 0..clip, so a
    1x1 conv weighs every (frequency, value) pair on its own: double quantization shows as which
    values occur (gaps and peaks at multiples of an earlier step), not as their size. The table
    modulates those features (FiLM: log2 of each step, plus a no-table flag), since the same integer
    means another thing under another table (a hand-made check flipped sign between qualities 95
    and 80 with a fixed feature). A 3x3 conv then compares neighbouring blocks, the region-versus-
    host contrast that a splice or a local recompression leaves.

    Why one-hot inside the model: the input stays small integers, which INT8 holds exactly at
    scale 1, and the one-hot is 0/1, which it holds exactly too.
    """

    def __init__(self, freqs: int, clip: int, width: int, out: int):
        super().__init__()
        self.freqs, self.clip = freqs, clip
        # 1-D (a 5-D buffer would break module.to(channels_last)); viewed in forward
        self.register_buffer("bins", torch.arange(clip + 1, dtype=torch.float32), persistent=False)
        self.embed = ConvBN(freqs * (clip + 1), width, 1)
        self.film = nn.Linear(65, 2 * width)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.mix = ConvBN(width, width, 3)
        self.proj = ConvBN(width, out, 1, relu=False)

    def forward(self, dct: torch.Tensor, qtable: torch.Tensor) -> torch.Tensor:
        b, f, h, w = dct.shape
        onehot = (dct.unsqueeze(2) == self.bins.view(1, 1, -1, 1, 1)).to(dct.dtype).reshape(b, f * (self.clip + 1), h, w)
        d = self.embed(onehot)
        none = (qtable.amax(1, keepdim=True) <= 0).to(qtable.dtype)
        qf = torch.cat([torch.log2(qtable.clamp(1.0, 255.0)) / 8.0, none], 1)
        g, s = self.film(qf).chunk(2, 1)
        d = d * (1.0 + g[:, :, None, None]) + s[:, :, None, None]
        return self.proj(self.mix(d))


class BlockStudent(nn.Module):
    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        # optional fixed residual front end (cfg.res_clip > 0): see ResidualFront
        self.front = ResidualFront(cfg.res_clip, cfg.mean, cfg.std) if cfg.res_clip > 0 else None
        self.stem = BlockStem(w[0], min(cfg.stem_hp, w[0]), 3 + (ResidualFront.N if self.front is not None else 0))
        self.stages = nn.ModuleList([BlockStage(w[0], w[0], cfg.mids[0], False),
                                     BlockStage(w[0], w[1], cfg.mids[1], True),
                                     BlockStage(w[1], w[2], cfg.mids[2], True)])
        self.lat = nn.ModuleList([ConvBN(c, cfg.dec, 1, relu=False) for c in w])
        self.smooth = ConvBN(cfg.dec, cfg.dec2, 3)
        self.mask_head = nn.Conv2d(cfg.dec2, 1, 1)
        self.cls = nn.Linear(2 * w[-1] + 2, 1)
        self.dct = DCTStream(cfg.dct_freqs, cfg.dct_clip, cfg.dct_width, w[0]) if cfg.dct_freqs > 0 else None

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's inputs, in call and ONNX order."""
        return ("image", "dct", "qtable") if self.dct is not None else ("image",)

    def forward(self, x: torch.Tensor, dct: torch.Tensor | None = None,
                qtable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x) if self.front is None else self.stem(self.front(x), self.front.order())
        if self.dct is not None:
            if dct is None or qtable is None:
                raise ValueError("this student has a compression-history stream: call it with (x, dct, qtable)")
            h = h + self.dct(dct, qtable)
        feats = []
        for st in self.stages:
            h = st(h)
            feats.append(h)
        p = self.lat[2](feats[2])
        for i in (1, 0):
            p = self.lat[i](feats[i]) + F.interpolate(p, scale_factor=2.0, mode="nearest")
        mask8 = self.mask_head(self.smooth(p))
        top = feats[2]
        pooled = torch.cat([top.mean((2, 3)), top.amax((2, 3)), mask8.amax((2, 3)), mask8.mean((2, 3))], 1)
        mask = F.interpolate(mask8, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.cls(pooled).squeeze(1), mask

    def full_precision_layers(self) -> list[str]:
        """Layers the quantize stage keeps in full precision: the fixed residual filters read the
        normalized image, and INT8 quantization of it (a step of ~1.2 grey levels) would round away
        the 0.5-3 grey-level traces they exist for. Their output is clipped to [-1, 1] and quantizes
        well. (The CPU INT8 path instead feeds them raw uint8 pixels, which quantize exactly:
        quantize.raw_input.)"""
        return ["front.conv"] if self.front is not None else []

    # ---- pruning interface (see spec.py) ----
    def prune_spec(self) -> PruneSpec:
        cfg = self.cfg
        groups: list[PruneGroup] = []
        blocks: list[tuple[str, int]] = []
        # the stem's channels are stage 0's residual stream
        for s, (w, mids) in enumerate(zip(cfg.widths, cfg.mids)):
            pre = f"stages.{s}"
            if s == 0:
                members = [("stem.conv", 0, 0), ("stem.bn", 0, 0), ("stem", 0, 0)]
                if self.dct is not None:  # the stream is added to the stem's channels
                    members += [("dct.proj.0", 0, 0), ("dct.proj.1", 0, 0)]
                points = ["stem"]
            else:
                members = [(f"{pre}.down.0", 0, 0), (f"{pre}.down.1", 0, 0)]
                points = [f"{pre}.down.1"]
            members.append((f"lat.{s}.0", 1, 0))
            if s < 2:
                members.append((f"stages.{s + 1}.down.0", 1, 0))
            else:
                members += [("cls", 1, 0), ("cls", 1, w)]
            for b, m in enumerate(mids):
                bp = f"{pre}.blocks.{b}"
                members += [(f"{bp}.a.0", 1, 0), (f"{bp}.b.0", 0, 0), (f"{bp}.b.1", 0, 0)]
                points.append(f"{bp}.b.1")
                groups.append(PruneGroup(f"s{s}b{b}", m, [(f"{bp}.a.0", 0, 0), (f"{bp}.a.1", 0, 0),
                                                          (f"{bp}.b.0", 1, 0)],
                                         [f"{bp}.a.1"], min_keep=8, align=8, block=(f"{pre}.blocks", b)))
                blocks.append((f"{pre}.blocks", b))
            groups.append(PruneGroup(f"s{s}", w, members, points, min_keep=16, align=8))
        groups += decoder_groups(3, cfg.dec, cfg.dec2, align=8)
        # LoRA on dense convs and the head; the stem's projected conv is not a plain Conv2d call
        targets = [n for n, m in self.named_modules()
                   if (isinstance(m, nn.Conv2d) and n not in ("stem.conv", "front.conv")) or isinstance(m, nn.Linear)]
        return PruneSpec(groups, blocks, targets)

    @staticmethod
    def pruned_config(cfg: StudentConfig, keep: dict[str, int], dropped: set[tuple[str, int]]) -> StudentConfig:
        # the zero-sum filters are the first stem_hp channels only before pruning; afterwards the
        # (sliced) `hp` buffer records which survived, and stem_hp is an upper bound
        return shrink_config(cfg, keep, dropped)
