"""A student's inputs beyond the image: one place that knows them, for every caller of a model.

A student with the compression-history stream (block.DCTStream) takes (image, dct, qtable); the
others take the image alone. Callers hold the extra inputs in a dict by name and call `run`.
"""

from __future__ import annotations

import torch

EXTRA = ("dct", "qtable")


def input_names(model) -> tuple[str, ...]:
    """The model's input names, in call and ONNX order ("image" first)."""
    model = getattr(model, "module", model)
    return tuple(getattr(model, "input_names", ("image",)))


def dct_spec(model) -> tuple[int, int] | None:
    """(frequencies, clip) of the model's DCT stream, or None."""
    model = getattr(model, "module", model)
    s = getattr(model, "dct", None)
    return (int(s.freqs), int(s.clip)) if s is not None else None


def dummy_inputs(model, batch: int, tile: int) -> tuple[torch.Tensor, ...]:
    """Zero inputs of the right shapes (a zero table: a file without one)."""
    out = [torch.zeros(batch, 3, tile, tile)]
    spec = dct_spec(model)
    if spec is not None and "dct" in input_names(model):
        out += [torch.zeros(batch, spec[0], tile // 8, tile // 8), torch.zeros(batch, 64)]
    return tuple(out)


def run(model, x: torch.Tensor, extra: dict | None = None):
    """model(x, *extras in the model's order); ValueError naming what is missing."""
    names = input_names(model)[1:]
    if not names:
        return model(x)
    extra = extra or {}
    missing = [n for n in names if n not in extra]
    if missing:
        raise ValueError(f"the model needs inputs {', '.join(missing)} beside the image")
    return model(x, *[torch.as_tensor(extra[n]).to(x.device) for n in names])
