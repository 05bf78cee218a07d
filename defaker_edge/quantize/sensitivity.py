"""Per-layer quantization sensitivity, and the auto-exclude search built on it.

Sensitivity of a layer = the damage done when that layer ALONE is quantized (every other
quantizer off), measured on calibration tiles against the FP32 model as
    mean |sigmoid(fake_q) - sigmoid(fake_fp32)| + mean |sigmoid(mask_q) - sigmoid(mask_fp32)|,
i.e. how far the quantized layer moves the two outputs the gate scores (image probability and
mask probability). Why a proxy and not AUC per layer: one held-out evaluation per layer would cost
minutes each, and AUC on a few hundred images is too coarse to rank single layers; the output
divergence is smooth and tracks it. The final decision is always the real gate on the ONNX file.

Auto-exclude: keep the top-k most sensitive layers in full precision, trying k = 1, 2, 4, ...
until the gate passes, then bisect down to the smallest passing k (fewest FP32 layers).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


def _sig(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _outputs(model, batches: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    fs, ms = [], []
    with torch.no_grad():
        for x in batches:
            f, m = model(*[torch.from_numpy(a) for a in (x if isinstance(x, tuple) else (x,))])
            fs.append(_sig(f.float().reshape(-1).numpy()))
            ms.append(_sig(m.float().numpy()))
    return np.concatenate(fs), np.concatenate(ms)


def rank_layers(fp32_model, qmodel, layers: list[str], batches: list[np.ndarray]) -> list[tuple[str, float]]:
    """[(layer, sensitivity)] most sensitive first. `qmodel` is restored to all-enabled on return."""
    from tqdm import tqdm

    from .modelopt_ptq import set_layers_enabled

    ref_f, ref_m = _outputs(fp32_model, batches)
    scores = []
    set_layers_enabled(qmodel, layers, False)
    try:
        for name in tqdm(layers, desc="sensitivity", unit="layer", leave=False, disable=None):
            set_layers_enabled(qmodel, [name], True)
            f, m = _outputs(qmodel, batches)
            set_layers_enabled(qmodel, [name], False)
            scores.append((name, float(np.abs(f - ref_f).mean() + np.abs(m - ref_m).mean())))
    finally:
        set_layers_enabled(qmodel, layers, True)
    scores.sort(key=lambda t: -t[1])
    return scores


def fewest_excluded(ranked: list[str], passes: Callable[[list[str]], bool], max_k: int) -> list[str] | None:
    """Smallest top-k prefix of `ranked` for which `passes(prefix)` holds; None if none up to max_k.

    Assumes (as the ranking intends) that keeping more sensitive layers in FP32 never hurts, so
    the search doubles k to find a passing prefix, then bisects between the last failure and it.
    """
    max_k = min(max_k, len(ranked))
    lo, k = 0, 1  # lo: largest k known to fail (k = 0 failed before the search started)
    hi = None
    while k <= max_k:
        if passes(ranked[:k]):
            hi = k
            break
        lo = k
        k = min(k * 2, max_k) if k < max_k else max_k + 1
    if hi is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(ranked[:mid]):
            hi = mid
        else:
            lo = mid
    return ranked[:hi]
