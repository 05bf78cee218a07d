"""Parameter counts per module, built on the meta device (no memory, no weights, no tokenizer)."""

from __future__ import annotations


def info(preset: str) -> dict:
    import torch

    from .config import TeacherConfig
    from .model import DeFakerOneTeacher
    from .prompt import vocabulary

    cfg = TeacherConfig.preset(preset)
    vocab = int(cfg.text.get("vocab_size") or len(vocabulary(cfg.questions)))
    with torch.device("meta"):
        model = DeFakerOneTeacher(cfg, None, vocab_size=vocab)
    counts = model.param_counts()
    total = counts.pop("total_params")
    return {"preset": preset, "params": counts, "total_params": total,
            "tokens_per_tile": cfg.tokens_per_tile, "tile": cfg.force_image_size,
            "max_tiles": cfg.max_dynamic_patch, "sam_image_size": cfg.sam_image_size}
