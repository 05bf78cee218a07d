"""Parameter counts per module, built on the meta device (no memory, no weights, no tokenizer)."""

from __future__ import annotations


def info(preset: str) -> dict:
    import torch

    from .config import TeacherConfig
    from .model import DeFakerOneTeacher
    from .prompt import vocabulary

    cfg = TeacherConfig.from_preset(preset)
    vocab = int(cfg.text.get("vocab_size") or len(vocabulary(cfg.questions)))
    with torch.device("meta"):
        model = DeFakerOneTeacher(cfg, None, vocab_size=vocab)
    counts = model.param_counts()
    total = counts.pop("total_params")
    return {"preset": preset, "params": counts, "total_params": total,
            "tokens_per_tile": cfg.tokens_per_tile, "tile": cfg.force_image_size,
            "max_tiles": cfg.max_dynamic_patch, "sam_image_size": cfg.sam_image_size}


def time_predict(preset: str, device: str = "cpu", runs: int = 5, height: int = 600, width: int = 800,
                 dtype: str = "float32") -> dict:
    """Latency of `predict` with random weights, built directly on `device` (bf16/fp16 on a GPU)."""
    import time

    import numpy as np
    import torch

    from .config import TeacherConfig
    from .model import DeFakerOneTeacher
    from .prompt import build_tokenizer

    cfg = TeacherConfig.from_preset(preset)
    tok = build_tokenizer(cfg.questions)
    torch.manual_seed(0)
    with torch.device(device):
        model = DeFakerOneTeacher(cfg, tok, vocab_size=int(cfg.text.get("vocab_size") or len(tok)))
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    img = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    model.predict(img)  # warm-up
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict(img)
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"preset": preset, "device": device, "dtype": dtype, "image": [height, width], "runs": runs,
            "ms_p50": float(np.median(times)), "ms_min": float(np.min(times))}
