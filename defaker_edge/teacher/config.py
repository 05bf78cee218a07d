"""The teacher's typed configuration and its three presets (DESIGN §3).

`TeacherConfig` holds plain dicts for the three native transformers configs (InternVL vision,
a Llama-shaped text model, SAM2) plus the DeFakerOne wiring: dynamic tiling, the prompt, the
answer words and the detection questions. It is what `config.json` of a checkpoint stores, so a
checkpoint rebuilds exactly the model that wrote it. Only the standard library is imported here:
`defaker teacher info` on the meta device and the CLI's --help must not pay for transformers.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ArtifactError

FORMAT = "defaker-teacher/1"

# The eight first-token answer words (DeFakerOne): P(fake) = softmax mass of the first four.
POSITIVE_WORDS = ("Yes", "Yeah", "True", "Sure")
NEGATIVE_WORDS = ("No", "Not", "Never", "None")
ANSWER_WORDS = POSITIVE_WORDS + NEGATIVE_WORDS

# Our own ten yes/no phrasings. Training samples one at random per step; inference uses the
# first by default (`question_mode="first"`, one LLM pass) or averages P(fake) over all ten
# (`question_mode="all"`, ten passes over the same vision features).
QUESTIONS = (
    "Has this image been manipulated or generated ?",
    "Is this picture forged in any way ?",
    "Was any part of this image edited , spliced or synthesized ?",
    "Does this image contain tampered regions ?",
    "Is this photo fake ?",
    "Has someone altered the content of this image ?",
    "Is there evidence of forgery in this image ?",
    "Was this image produced or modified by editing software or a generator ?",
    "Are some pixels of this image not authentic ?",
    "Would a forensic analyst call this image manipulated ?",
)

# Added special tokens, as Sa2VA's tokenizer carries them, plus the chat-template markers.
SPECIAL_TOKENS = ("[SEG]", "<p>", "</p>", "<vp>", "</vp>", "<img>", "</img>", "<IMG_CONTEXT>",
                  "<|im_start|>", "<|im_end|>")

# High-pass (noise-residual) input channels: a fixed SRM-style 5x5 second-order kernel applied
# per colour channel to the normalized tile and concatenated to it (3 -> 6 channels). Forgery
# traces are in the noise, which a randomly initialised patch embedding finds slowly from RGB.
# It is fixed pre-processing, not a trained layer, so the towers stay the native classes (only
# their `num_channels` is 6). `highpass_gain` brings the residual to roughly unit scale.


@dataclass
class TeacherConfig:
    preset: str = "custom"
    vision: dict[str, Any] = field(default_factory=dict)  # InternVLVisionConfig kwargs
    text: dict[str, Any] = field(default_factory=dict)  # LlamaConfig kwargs (InternLM2 maps onto Llama)
    sam2: dict[str, Any] = field(default_factory=dict)  # {"backbone": {...}, "vision": {...}, "prompt_encoder": {...}, "mask_decoder": {...}}
    # InternVL wiring
    force_image_size: int = 448
    downsample_ratio: float = 0.5
    select_layer: int = -1
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    template: str = "internlm2-chat"
    # DeFakerOne wiring
    answer_positive: tuple[str, ...] = POSITIVE_WORDS
    answer_negative: tuple[str, ...] = NEGATIVE_WORDS
    questions: tuple[str, ...] = QUESTIONS
    question_mode: str = "first"  # "first" | "all" (see QUESTIONS)
    highpass_vision: bool = False
    highpass_sam: bool = False
    highpass_gain: float = 4.0
    # 0: predict() sees the whole image (InternVL tiling + SAM2 resize), as DeFakerOne does.
    # T > 0: predict() runs that same path on each native-resolution T x T tile (runtime.tiling,
    # JPEG-grid aligned) and stitches: mask logits averaged where tiles overlap, fake_prob = max
    # over tiles. Small models trained on native crops need this: resizing erases the traces.
    native_tile: int = 0
    native_overlap: int = 32

    # --- derived sizes ---------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        p = self.vision.get("patch_size", 14)
        return int(p[0] if isinstance(p, (list, tuple)) else p)

    @property
    def tokens_per_tile(self) -> int:
        side = self.force_image_size // self.patch_size
        return int(round(side * self.downsample_ratio)) ** 2

    @property
    def sam_image_size(self) -> int:
        return int(self.sam2.get("prompt_encoder", {}).get("image_size", 1024))

    @property
    def seg_dim(self) -> int:
        return int(self.sam2.get("prompt_encoder", {}).get("hidden_size", 256))

    @property
    def text_hidden(self) -> int:
        return int(self.text["hidden_size"])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("answer_positive", "answer_negative", "questions"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TeacherConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ArtifactError(f"teacher config has unknown fields: {', '.join(unknown)}")
        d = dict(d)
        for k in ("answer_positive", "answer_negative", "questions"):
            if k in d:
                d[k] = tuple(d[k])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = []
        for k in ("vision", "text", "sam2"):
            if not getattr(self, k):
                problems.append(f"'{k}' is empty")
        if self.question_mode not in ("first", "all"):
            problems.append(f"question_mode must be 'first' or 'all', got {self.question_mode!r}")
        if not self.questions:
            problems.append("no detection questions")
        if len(self.answer_positive) != 4 or len(self.answer_negative) != 4:
            problems.append("answer words must be four positive and four negative")
        if self.native_tile and self.native_tile <= self.native_overlap:
            problems.append("native_tile must exceed native_overlap")
        if self.force_image_size % self.patch_size:
            problems.append(f"force_image_size {self.force_image_size} is not a multiple of patch {self.patch_size}")
        if not (1 <= self.min_dynamic_patch <= self.max_dynamic_patch):
            problems.append("need 1 <= min_dynamic_patch <= max_dynamic_patch")
        if problems:
            raise ArtifactError("invalid teacher config: " + "; ".join(problems))

    @classmethod
    def from_preset(cls, name: str) -> "TeacherConfig":
        if name not in PRESETS:
            raise ArtifactError(f"unknown teacher preset {name!r} (choose from {', '.join(PRESETS)})")
        cfg = copy.deepcopy(PRESETS[name])
        cfg.validate()
        return cfg


def _sam2(*, image: int, hidden: int, dims: list[int], heads: list[int], blocks: list[int],
          windows: list[int], global_blocks: list[int], d_model: int = 256, dec_mlp: int = 2048,
          dec_heads: int = 8, channels: int = 3, pos_bg: tuple[int, int] = (7, 7)) -> dict[str, Any]:
    # Hiera downsamples by 4 then 2 per stage; the three FPN levels the mask decoder uses are
    # strides 4, 8, 16 (the 1/32 level only feeds the top-down path).
    s = image // 4
    return {
        "backbone": {"hidden_size": hidden, "embed_dim_per_stage": dims, "num_attention_heads_per_stage": heads,
                     "blocks_per_stage": blocks, "window_size_per_stage": windows,
                     "global_attention_blocks": global_blocks, "image_size": [image, image],
                     "num_channels": channels, "window_positional_embedding_background_size": list(pos_bg)},
        "vision": {"backbone_channel_list": list(reversed(dims)), "fpn_hidden_size": d_model,
                   "backbone_feature_sizes": [[s, s], [s // 2, s // 2], [s // 4, s // 4]]},
        "prompt_encoder": {"hidden_size": d_model, "image_size": image, "patch_size": 16},
        "mask_decoder": {"hidden_size": d_model, "mlp_dim": dec_mlp, "num_attention_heads": dec_heads,
                         "iou_head_hidden_dim": d_model},
    }


PRESETS: dict[str, TeacherConfig] = {
    # Random weights, for tests: every code path at toy width; a 600x800 image in seconds on CPU.
    "tiny": TeacherConfig(
        preset="tiny",
        vision={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                "image_size": 224, "patch_size": 14, "attention_bias": True, "use_mean_pooling": True},
        text={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "max_position_embeddings": 4096},
        sam2=_sam2(image=128, hidden=16, dims=[16, 32, 64, 128], heads=[1, 1, 2, 2], blocks=[1, 2, 2, 1],
                   windows=[8, 4, 8, 4], global_blocks=[4], dec_mlp=128, dec_heads=2),
        force_image_size=224, max_dynamic_patch=6,
    ),
    # Small enough to train on 2 CPU cores in under an hour, with the noise-residual input. One
    # Trained on native 128 crops; inference on native 128 tiles (native_tile): both towers see
    # pixels at their original scale (128 = the InternVL tile = SAM2's input: no resize at all).
    "reference": TeacherConfig(
        preset="reference",
        vision={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                "image_size": 128, "patch_size": 16, "attention_bias": True, "use_mean_pooling": True,
                "num_channels": 6},
        text={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "max_position_embeddings": 2048},
        # SAM2 d_model 64 here (256 in SAM2 proper): on a shared 2-core CPU the 256-wide FPN
        # dominated the step time; so this preset's seg_embedding is 64-d.
        sam2=_sam2(image=128, hidden=16, dims=[16, 32, 64, 128], heads=[1, 1, 2, 4], blocks=[1, 1, 2, 1],
                   windows=[8, 4, 8, 4], global_blocks=[], d_model=64, dec_mlp=128, dec_heads=2, channels=6),
        force_image_size=128, max_dynamic_patch=1, use_thumbnail=True,
        highpass_vision=True, highpass_sam=True, native_tile=128, native_overlap=32,
    ),
    # Real sizes: InternViT-300M-448px + an InternLM2-1.8B-shaped Llama + SAM2.0 Hiera-L.
    "defakerone-2b": TeacherConfig(
        preset="defakerone-2b",
        vision={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                "image_size": 448, "patch_size": 14, "attention_bias": True, "use_mean_pooling": True,
                "layer_norm_eps": 1e-6},
        text={"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
              "intermediate_size": 8192, "vocab_size": 92553, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
              "max_position_embeddings": 32768},
        sam2=_sam2(image=1024, hidden=144, dims=[144, 288, 576, 1152], heads=[2, 4, 8, 16], blocks=[2, 6, 36, 4],
                   windows=[8, 4, 16, 8], global_blocks=[23, 33, 43]),
        force_image_size=448, max_dynamic_patch=12,
    ),
}
