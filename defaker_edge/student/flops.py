"""Parameter and FLOP counts, measured with forward hooks (no fvcore).

MACs are counted for Conv2d, ConvTranspose2d, Linear and attention's two matmuls; FLOPs = 2 x MACs.
Normalisation, activations and pooling are left out (they are a few percent and fuse away).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_flops(model: nn.Module, tile: int) -> dict[str, int]:
    from .inputs import dummy_inputs

    from .pruned_teacher import ViTAttention, DecAttention

    macs = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        k = m.weight[0].numel()  # in/groups * kh * kw
        macs[0] += out.numel() // out.shape[0] * k

    def convt_hook(m: nn.ConvTranspose2d, inp, out):
        macs[0] += inp[0].numel() // inp[0].shape[0] * m.weight.shape[1] * m.weight[0, 0].numel()

    def linear_hook(m: nn.Linear, inp, out):
        macs[0] += out.numel() // out.shape[0] * m.in_features

    def attn_hook(m, inp, out):
        q = inp[0]
        k = inp[1] if len(inp) > 1 else inp[0]
        inner = m.q_proj.out_features
        macs[0] += 2 * q.shape[1] * k.shape[1] * inner  # QK^T and AV

    hooks = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.ConvTranspose2d):
            hooks.append(mod.register_forward_hook(convt_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, (ViTAttention, DecAttention)):
            hooks.append(mod.register_forward_hook(attn_hook))
    was_training = model.training
    model.eval()
    try:
        model(*dummy_inputs(model, 1, tile))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {"params": count_params(model), "macs": int(macs[0]), "flops": int(2 * macs[0]), "tile": tile}
