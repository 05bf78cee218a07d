"""Teacher targets per image, at native resolution: from a TeacherCache or from a teacher run online.

Both give the same thing, `ImageTargets(fake_prob, soft_mask float16 [ceil(H/4), ceil(W/4)], tiles)`,
the cache's CacheEntry layout (docs/INTERFACES.md). An online teacher runs once per image and the
result is kept in memory, so every crop of that image reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import ArtifactError


@dataclass
class ImageTargets:
    fake_prob: float
    soft_mask: np.ndarray  # float16 probabilities at stride 4
    tiles: list[Any] = field(default_factory=list)
    features: np.ndarray | None = None  # pooled teacher vision features, for feature KD


class TargetSource(Protocol):
    def __call__(self, key: str, image: np.ndarray) -> ImageTargets: ...


def logits_to_soft_mask(mask_logits: np.ndarray) -> np.ndarray:
    """[H, W] logits -> [ceil(H/4), ceil(W/4)] mean probability of each 4x4 cell (edge cells: their pixels)."""
    m = np.asarray(mask_logits, dtype=np.float32)
    p = 1.0 / (1.0 + np.exp(-np.clip(m, -30, 30)))
    h, w = p.shape
    hh, ww = -(-h // 4), -(-w // 4)
    pad = np.zeros((hh * 4, ww * 4), np.float32)
    cnt = np.zeros_like(pad)
    pad[:h, :w] = p
    cnt[:h, :w] = 1.0
    s = pad.reshape(hh, 4, ww, 4).sum((1, 3))
    c = cnt.reshape(hh, 4, ww, 4).sum((1, 3))
    return (s / np.maximum(c, 1)).astype(np.float16)


class OnlineTeacherTargets:
    """Runs `teacher.predict(img_u8)` once per image key and keeps the result."""

    def __init__(self, teacher: Any, features: bool = False):
        self.teacher = teacher
        self.features = features  # ask predict() for vision_features (feature KD)
        self._memo: dict[str, ImageTargets] = {}

    def __call__(self, key: str, image: np.ndarray) -> ImageTargets:
        if key not in self._memo:
            import torch

            with torch.no_grad():
                out = self.teacher.predict(image, return_features=True) if self.features else \
                    self.teacher.predict(image)
            ml = out.mask_logits
            ml = ml.detach().float().cpu().numpy() if hasattr(ml, "detach") else np.asarray(ml, np.float32)
            if ml.shape != image.shape[:2]:
                raise ArtifactError(f"teacher mask_logits {ml.shape} != image {image.shape[:2]} for {key}")
            feats = getattr(out, "vision_features", None)
            if feats is not None:
                f = feats.detach().float().cpu().numpy() if hasattr(feats, "detach") else np.asarray(feats, np.float32)
                feats = pool_features(f)
            self._memo[key] = ImageTargets(float(out.fake_prob), logits_to_soft_mask(ml), [], feats)
        return self._memo[key]


def pool_features(f: np.ndarray) -> np.ndarray:
    """Teacher features -> one vector: [C, h, w] (the teacher's SAM2 embedding) or [N, C] tokens."""
    f = np.asarray(f, np.float32)
    if f.ndim == 3:
        return f.mean((1, 2))
    return f.reshape(-1, f.shape[-1]).mean(0)


class CacheTargets:
    """Reads defaker_edge.teacher.cache.TeacherCache entries by Sample.key."""

    def __init__(self, cache_dir: str):
        from ..teacher.cache import TeacherCache  # the teacher stage's reader

        self.cache = TeacherCache(cache_dir)

    def __call__(self, key: str, image: np.ndarray) -> ImageTargets:
        try:
            e = self.cache[key]
        except KeyError:
            raise ArtifactError(f"teacher cache has no entry for {key!r}; rebuild it over this manifest") from None
        soft = np.asarray(e.soft_mask, dtype=np.float16)
        want = (-(-image.shape[0] // 4), -(-image.shape[1] // 4))
        if soft.shape != want:
            raise ArtifactError(f"teacher cache entry {key!r}: soft_mask {soft.shape}, expected {want}")
        feats = getattr(e, "features", None)
        return ImageTargets(float(e.fake_prob), soft, list(getattr(e, "tiles", []) or []),
                            pool_features(feats) if feats is not None else None)


def soft_mask_to_image(soft: np.ndarray, h: int, w: int) -> np.ndarray:
    """Stride-4 probabilities -> [h, w] (each cell repeated over its 4x4 pixels)."""
    s = np.asarray(soft, dtype=np.float32)
    return np.repeat(np.repeat(s, 4, 0), 4, 1)[:h, :w]


def is_student_dir(spec: str | None) -> bool:
    """Whether `spec` names a student checkpoint (config.json with a student family), not a teacher's."""
    import json
    import os

    if not spec or not os.path.isfile(os.path.join(spec, "config.json")):
        return False
    try:
        with open(os.path.join(spec, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "family" in cfg and str(cfg.get("format", "defaker-student/")).startswith("defaker-student/")


class CropTeacher:
    """A teacher with the student's contract, run on the very crops the student trains on.

    The stand-in teacher (a larger or longer-trained student, DESIGN §9) takes the same inputs as the
    student (image, dct, qtable), so there is nothing to cache per image: each batch's crops go
    through it once, under no_grad, and its sigmoid outputs become the batch's KD targets. That costs
    one forward per step (a third of a training step at equal size) and never a stale or misaligned
    target: the teacher sees exactly the augmented pixels and stream the student sees."""

    def __init__(self, model, bf16: bool = False):
        import torch

        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.bf16 = bf16
        self._torch = torch

    @classmethod
    def load(cls, path: str, bf16: bool = False) -> "CropTeacher":
        from ..student.io import load_student

        model, _ = load_student(path)
        return cls(model, bf16)

    def fill(self, batch: dict) -> dict:
        """Set batch's t_prob, t_mask and t_w from the teacher's answers on batch["x"] (+ extras)."""
        from ..student.inputs import EXTRA
        from ..student.inputs import run as run_student

        torch = self._torch
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            tl, tm = run_student(self.model, batch["x"], {k: batch[k] for k in EXTRA if k in batch})
        batch["t_prob"] = torch.sigmoid(tl.float())
        batch["t_mask"] = torch.sigmoid(tm.float())
        batch["t_w"] = torch.ones_like(batch["t_prob"])
        return batch
