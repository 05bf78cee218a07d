"""The pruned-teacher student: the teacher's InternViT vision tower + a SAM2-style mask decoder.

The tower uses the parameter names of transformers' InternVLVisionModel (so the teacher's
`vision_tower.*` weights load as they are) but lets every layer have its own head count and MLP
width, which is what pruning needs. Attention is written out (matmul + softmax) so it exports to
ONNX opset 17 with static shapes. The LLM is gone: a learned prompt token stands in for the [SEG]
embedding in the decoder, and a small head on [CLS ; prompt token] replaces the yes/no answer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import StudentConfig
from .spec import PruneGroup, PruneSpec


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    """[B, N, h*d] x [B, M, h*d] -> [B, N, h*d], plain softmax attention (exports everywhere).

    `heads` and `d` are Python ints from the module, so the traced graph has static shapes."""
    b, n, hd = q.shape
    m = k.shape[1]
    q = q.reshape(b, n, heads, d).transpose(1, 2)
    k = k.reshape(b, m, heads, d).transpose(1, 2)
    v = v.reshape(b, m, heads, d).transpose(1, 2)
    a = torch.softmax(q @ k.transpose(-1, -2) * (1.0 / math.sqrt(d)), dim=-1)
    return (a @ v).transpose(1, 2).reshape(b, n, hd)


class ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim, inner, bias=False)
        self.v_proj = nn.Linear(dim, inner, bias=False)
        self.projection_layer = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_layer(attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, self.head_dim))


class ViTMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTLayer(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp: int, ls: float):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(dim, eps=1e-6)
        self.attention = ViTAttention(dim, heads, head_dim)
        self.layernorm_after = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMLP(dim, mlp)
        self.lambda_1 = nn.Parameter(ls * torch.ones(dim))
        self.lambda_2 = nn.Parameter(ls * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.lambda_1 * self.attention(self.layernorm_before(x))
        return x + self.lambda_2 * self.mlp(self.layernorm_after(x))


class PatchEmbeddings(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.projection = nn.Conv2d(3, dim, patch, patch)


class Embeddings(nn.Module):
    def __init__(self, dim: int, patch: int, grid: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embeddings = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.patch_embeddings = PatchEmbeddings(dim, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, p], 1) + self.position_embeddings


class Encoder(nn.Module):
    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.layer = nn.ModuleList([ViTLayer(cfg.dim, h, cfg.head_dim, m, cfg.layer_scale)
                                    for h, m in zip(cfg.heads, cfg.mlp)])


class DecAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.out_proj(attend(self.q_proj(q), self.k_proj(k), self.v_proj(v), self.heads, self.head_dim))


class TwoWayBlock(nn.Module):
    """SAM's two-way block, lite: token self-attention, token->image, MLP, image->token."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = DecAttention(dim, heads)
        self.t2i = DecAttention(dim, heads)
        self.i2t = DecAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(4)])

    def forward(self, t, img, tpe, ipe):
        q = t + tpe
        t = self.norms[0](t + self.self_attn(q, q, t))
        t = self.norms[1](t + self.t2i(t + tpe, img + ipe, img))
        t = self.norms[2](t + self.mlp(t))
        img = self.norms[3](img + self.i2t(img + ipe, t + tpe, t))
        return t, img


class ChannelNorm(nn.Module):
    """LayerNorm over channels of an NCHW map (SAM's LayerNorm2d)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return (x - u) / torch.sqrt(s + 1e-6) * self.weight[:, None, None] + self.bias[:, None, None]


class MaskDecoder(nn.Module):
    def __init__(self, cfg: StudentConfig, grid: int):
        super().__init__()
        c = cfg.dec_dim
        self.grid = grid
        self.neck = nn.Linear(cfg.dim, c)
        self.image_pe = nn.Parameter(torch.randn(1, grid * grid, c) * 0.02)
        self.prompt_token = nn.Parameter(torch.randn(1, 1, c) * 0.02)  # stands in for the [SEG] embedding
        self.mask_token = nn.Parameter(torch.randn(1, 1, c) * 0.02)
        self.blocks = nn.ModuleList([TwoWayBlock(c, cfg.dec_heads) for _ in range(cfg.dec_depth)])
        self.final = DecAttention(c, cfg.dec_heads)
        self.final_norm = nn.LayerNorm(c)
        self.up1 = nn.ConvTranspose2d(c, c // 4, 2, 2)
        self.up_norm = ChannelNorm(c // 4)
        self.up2 = nn.ConvTranspose2d(c // 4, c // 8, 2, 2)
        self.hyper = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c // 8))

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = patches.shape[0]
        img = self.neck(patches)
        tpe = torch.cat([self.prompt_token, self.mask_token], 1).expand(b, -1, -1)
        t = tpe
        for blk in self.blocks:
            t, img = blk(t, img, tpe, self.image_pe)
        t = self.final_norm(t + self.final(t + tpe, img + self.image_pe, img))
        fmap = img.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        up = F.gelu(self.up2(F.gelu(self.up_norm(self.up1(fmap)))))
        w = self.hyper(t[:, 1])
        mask = (w[:, :, None, None] * up).sum(1, keepdim=True)
        return mask, t[:, 0]


class PrunedTeacherStudent(nn.Module):
    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        grid = cfg.tile // cfg.patch
        self.embeddings = Embeddings(cfg.dim, cfg.patch, grid)
        self.encoder = Encoder(cfg)
        self.decoder = MaskDecoder(cfg, grid)
        self.head = nn.Sequential(nn.Linear(cfg.dim + cfg.dec_dim, cfg.dec_dim), nn.GELU(), nn.Linear(cfg.dec_dim, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embeddings(x)
        for layer in self.encoder.layer:
            h = layer(h)
        mask, prompt = self.decoder(h[:, 1:])
        logit = self.head(torch.cat([h[:, 0], prompt], 1)).squeeze(1)
        return logit, mask

    def prune_spec(self) -> PruneSpec:
        cfg = self.cfg
        groups, blocks = [], []
        for i, (h, m) in enumerate(zip(cfg.heads, cfg.mlp)):
            p = f"encoder.layer.{i}"
            a = f"{p}.attention"
            groups.append(PruneGroup(f"L{i}.heads", h, [(f"{a}.q_proj", 0, 0), (f"{a}.k_proj", 0, 0), (f"{a}.v_proj", 0, 0),
                                                        (f"{a}.projection_layer", 1, 0)],
                                     [f"{a}.v_proj"], unit=cfg.head_dim, block=("encoder.layer", i)))
            groups.append(PruneGroup(f"L{i}.mlp", m, [(f"{p}.mlp.fc1", 0, 0), (f"{p}.mlp.fc2", 1, 0)],
                                     [f"{p}.mlp.fc1"], min_keep=8, block=("encoder.layer", i)))
            blocks.append(("encoder.layer", i))
        targets = [n for n, mod in self.named_modules() if isinstance(mod, nn.Linear) and n.startswith("encoder.")]
        return PruneSpec(groups, blocks, targets)

    @staticmethod
    def pruned_config(cfg: StudentConfig, keep: dict[str, int], dropped: set[tuple[str, int]]) -> StudentConfig:
        import copy

        new = copy.deepcopy(cfg)
        idx = [i for i in range(len(cfg.heads)) if ("encoder.layer", i) not in dropped]
        new.heads = [keep.get(f"L{i}.heads", cfg.heads[i]) for i in idx]
        new.mlp = [keep.get(f"L{i}.mlp", cfg.mlp[i]) for i in idx]
        return new
