"""DeFakerOneTeacher: transformers' InternVL (vision tower + projector + Llama-shaped LLM) and SAM2,
wired as Sa2VA / DeFakerOne (DESIGN §3).

Detection: the first answer token's logits restricted to the eight answer words; P(fake) is the
softmax mass of the four positive ones. Localization: the answer word (the most likely of the
eight) and `[SEG]` are fed back; the last-layer hidden state at `[SEG]` goes through
`text_hidden_fcs` and becomes one more sparse prompt token of SAM2's mask decoder (after the empty
point, label -1), dense prompt = no_mask_embed, image features = SAM2's FPN + no_mem_embed on the
last level; of the three multimask outputs the one with the best predicted IoU is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.tiling import MEAN, STD
from .config import TeacherConfig
from .prompt import IM_END, IM_START, IMG_END, IMG_START, TokenIds
from .tiling import dynamic_tiles, sam_input

# SRM-style second-order 5x5 residual kernel (see config.py: fixed pre-processing).
_HIGHPASS = torch.tensor([[-1, 2, -2, 2, -1],
                          [2, -6, 8, -6, 2],
                          [-2, 8, -12, 8, -2],
                          [2, -6, 8, -6, 2],
                          [-1, 2, -2, 2, -1]], dtype=torch.float32) / 12.0


@dataclass
class TeacherOutput:
    fake_prob: float
    mask_logits: torch.Tensor  # float32 [H, W] at the input's size
    seg_embedding: torch.Tensor  # float32 [seg_dim] (256 for SAM2)
    vision_features: torch.Tensor | None = None  # SAM2 image embedding [256, S/16, S/16] when asked


def native_configs(cfg: TeacherConfig, vocab_size: int, image_token_id: int):
    """(InternVLConfig, Sam2Config) for a TeacherConfig."""
    from transformers import (InternVLConfig, InternVLVisionConfig, LlamaConfig, Sam2Config,
                              Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig,
                              Sam2VisionConfig)

    vision = dict(cfg.vision)
    vision.setdefault("image_size", cfg.force_image_size)
    text = dict(cfg.text)
    text.setdefault("vocab_size", vocab_size)
    text.setdefault("tie_word_embeddings", False)  # InternLM2 keeps a separate output matrix
    ivl = InternVLConfig(vision_config=InternVLVisionConfig(**vision), text_config=LlamaConfig(**text),
                         image_token_id=image_token_id, image_seq_length=cfg.tokens_per_tile,
                         downsample_ratio=cfg.downsample_ratio, vision_feature_layer=cfg.select_layer,
                         vision_feature_select_strategy="default", tie_word_embeddings=False)
    s = cfg.sam2
    sam = Sam2Config(
        vision_config=Sam2VisionConfig(backbone_config=Sam2HieraDetConfig(**s["backbone"]), **s["vision"]),
        prompt_encoder_config=Sam2PromptEncoderConfig(**s["prompt_encoder"]),
        mask_decoder_config=Sam2MaskDecoderConfig(**s["mask_decoder"]),
    )
    return ivl, sam


class DeFakerOneTeacher(nn.Module):
    def __init__(self, cfg: TeacherConfig, tokenizer=None, *, vocab_size: int | None = None):
        super().__init__()
        from transformers import InternVLForConditionalGeneration, Sam2Model

        cfg.validate()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.ids = TokenIds(tokenizer, cfg.answer_positive, cfg.answer_negative) if tokenizer is not None else None
        vocab = vocab_size or (len(tokenizer) if tokenizer is not None else int(cfg.text.get("vocab_size", 0)))
        if not vocab:
            raise ValueError("need a tokenizer or text.vocab_size")
        ivl_cfg, sam_cfg = native_configs(cfg, vocab, self.ids.img_context if self.ids else 0)
        self.vlm = InternVLForConditionalGeneration(ivl_cfg)
        self.sam2 = Sam2Model(sam_cfg)
        # Meta's SAM2 has one random-Fourier matrix (prompt encoder's pe_layer) that the decoder's dense
        # positional encoding also uses; transformers draws two. Tie them so both layouts agree.
        with torch.no_grad():
            self.sam2.shared_image_embedding.positional_embedding.copy_(
                self.sam2.prompt_encoder.shared_embedding.positional_embedding)
        d = cfg.text_hidden
        self.text_hidden_fcs = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, cfg.seg_dim),
                                             nn.Dropout(0.0))
        self.register_buffer("pixel_mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("highpass_kernel", _HIGHPASS.expand(3, 1, 5, 5).clone(), persistent=False)

    # ---- inputs --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.text_hidden_fcs[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_hidden_fcs[0].weight.dtype

    def pixels(self, u8: torch.Tensor, highpass: bool) -> torch.Tensor:
        """uint8 [N, S, S, 3] (or float 0..255) -> normalized float [N, 3 or 6, S, S]."""
        x = u8.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.pixel_mean) / self.pixel_std
        if highpass:
            r = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.highpass_kernel, groups=3)
            x = torch.cat([x, r * self.cfg.highpass_gain], dim=1)
        return x.to(self.dtype)

    def prompt_ids(self, question: str, n_tiles: int) -> list[int]:
        """Token ids of the chat prompt with <image> expanded; built in pieces (no 3k-token string)."""
        enc = lambda s: self.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        head = enc(f"{IM_START}user\n{IMG_START}")
        tail = enc(f"{IMG_END}\n{question}{IM_END}\n{IM_START}assistant\n")
        return head + [self.ids.img_context] * (self.cfg.tokens_per_tile * n_tiles) + tail

    # ---- towers --------------------------------------------------------------------------------
    def image_tokens(self, tiles_u8: torch.Tensor) -> torch.Tensor:
        """[N, S, S, 3] tiles -> projected vision tokens [N, tokens_per_tile, D_llm]."""
        px = self.pixels(tiles_u8, self.cfg.highpass_vision)
        return self.vlm.model.get_image_features(pixel_values=px, return_dict=True).pooler_output

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        emb = self.vlm.model.get_input_embeddings()(input_ids)
        where = (input_ids == self.ids.img_context).unsqueeze(-1)
        if int(where.sum()) != image_tokens.shape[0] * image_tokens.shape[1]:
            raise ValueError(f"{int(where.sum())} <IMG_CONTEXT> tokens for {image_tokens.shape[:2]} image tokens")
        return emb.masked_scatter(where, image_tokens.reshape(-1, emb.shape[-1]).to(emb.dtype))

    def llm(self, inputs_embeds, attention_mask=None, cache=None, use_cache=False):
        out = self.vlm.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            cache=cache, use_cache=use_cache)
        return out.last_hidden_state, getattr(out, "cache", None)

    def sam_embeddings(self, sam_u8: torch.Tensor) -> list[torch.Tensor]:
        """SAM2 FPN levels [B, C, h, w] (high-res first, projected by conv_s0/s1), no_mem_embed on the last."""
        px = self.pixels(sam_u8, self.cfg.highpass_sam)
        b = px.shape[0]
        feats = list(self.sam2.get_image_features(px, return_dict=True).fpn_hidden_states)
        feats[-1] = feats[-1] + self.sam2.no_memory_embedding
        sizes = self.sam2.config.vision_config.backbone_feature_sizes
        return [f.permute(1, 2, 0).reshape(b, -1, *sz) for f, sz in zip(feats, sizes)]

    def decode_masks(self, embs: list[torch.Tensor], seg_emb: torch.Tensor):
        """-> (low-res mask logits [B, 3, h, w], predicted IoU [B, 3])."""
        b = seg_emb.shape[0]
        points = torch.zeros(b, 1, 1, 2, device=seg_emb.device, dtype=seg_emb.dtype)
        labels = -torch.ones(b, 1, 1, dtype=torch.int32, device=seg_emb.device)
        sparse, dense = self.sam2.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                                 input_masks=None)
        sparse = torch.cat([sparse, seg_emb[:, None, None, :].to(sparse.dtype)], dim=2)
        pos = self.sam2.get_image_wide_positional_embeddings().repeat(b, 1, 1, 1)
        masks, iou, _, _ = self.sam2.mask_decoder(
            image_embeddings=embs[-1], image_positional_embeddings=pos, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True, high_resolution_features=embs[:-1])
        return masks[:, 0], iou[:, 0]

    # ---- training forward (teacher forcing) ------------------------------------------------------
    def forward_train(self, tiles_u8: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      answer_pos: torch.Tensor, seg_pos: torch.Tensor, sam_u8: torch.Tensor):
        """Sequences are prompt + answer word + [SEG], right-padded. Returns
        (logits at the answer position [B, V], mask logits [B, 3, h, w], predicted IoU [B, 3])."""
        emb = self.embed(input_ids, self.image_tokens(tiles_u8))
        hidden, _ = self.llm(emb, attention_mask=attention_mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = self.vlm.lm_head(hidden[rows, answer_pos])
        seg = self.text_hidden_fcs(hidden[rows, seg_pos])
        masks, iou = self.decode_masks(self.sam_embeddings(sam_u8), seg)
        return logits, masks, iou

    # ---- inference -----------------------------------------------------------------------------
    def answer_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the eight answer words' logits -> [.., 8] (first four positive)."""
        return torch.softmax(logits[..., self.ids.answers].float(), dim=-1)

    @torch.no_grad()
    def predict(self, img: np.ndarray, *, question_mode: str | None = None,
                return_features: bool = False) -> TeacherOutput:
        """uint8 [H, W, 3] -> TeacherOutput (see module docstring; config.native_tile for tiled mode)."""
        if self.tokenizer is None:
            raise ValueError("this teacher was built without a tokenizer (meta/counting only)")
        if not self.cfg.native_tile:
            return self._predict_whole(img, question_mode, return_features)
        from ..runtime.tiling import TileSpec, cut_tiles, tile_origins

        t = self.cfg.native_tile
        h, w = img.shape[:2]
        origins = tile_origins(h, w, TileSpec(tile=t, overlap=self.cfg.native_overlap))
        acc, cnt = torch.zeros(h, w), torch.zeros(h, w)
        best = None
        for (y, x), tile in zip(origins, cut_tiles(img, origins, t)):
            o = self._predict_whole(tile, question_mode, return_features)
            hh, ww = min(t, h - y), min(t, w - x)
            acc[y:y + hh, x:x + ww] += o.mask_logits[:hh, :ww]
            cnt[y:y + hh, x:x + ww] += 1
            if best is None or o.fake_prob > best.fake_prob:
                best = o
        return TeacherOutput(fake_prob=best.fake_prob, mask_logits=acc / cnt, seg_embedding=best.seg_embedding,
                             vision_features=best.vision_features)

    def _predict_whole(self, img: np.ndarray, question_mode: str | None, return_features: bool) -> TeacherOutput:
        mode = question_mode or self.cfg.question_mode
        cfg = self.cfg
        h, w = img.shape[:2]
        tiles = dynamic_tiles(img, cfg.force_image_size, cfg.min_dynamic_patch,
                              cfg.max_dynamic_patch if cfg.dynamic_image_size else 1, cfg.use_thumbnail)
        tokens = self.image_tokens(torch.from_numpy(tiles))
        questions = cfg.questions if mode == "all" else cfg.questions[:1]
        probs, seg_hidden = [], None
        for q in questions:
            ids = torch.tensor([self.prompt_ids(q, len(tiles))], device=self.device)
            hidden, cache = self.llm(self.embed(ids, tokens), use_cache=True)
            p = self.answer_probs(self.vlm.lm_head(hidden[:, -1]))[0]
            probs.append(float(p[:4].sum().detach()))
            if seg_hidden is None:  # the mask is prompted by the first question's [SEG]
                answer = self.ids.answers[int(p.argmax())]
                nxt = torch.tensor([[answer, self.ids.seg]], device=self.device)
                h2, _ = self.llm(self.vlm.model.get_input_embeddings()(nxt), cache=cache, use_cache=True)
                seg_hidden = h2[:, -1]
        seg = self.text_hidden_fcs(seg_hidden)
        embs = self.sam_embeddings(torch.from_numpy(np.array(sam_input(img, cfg.sam_image_size)))[None])
        masks, iou = self.decode_masks(embs, seg)
        best = masks[0, int(iou[0].argmax())][None, None].float()
        s = cfg.sam_image_size
        full = F.interpolate(best, size=(s, s), mode="bilinear", align_corners=False)
        full = F.interpolate(full, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        return TeacherOutput(fake_prob=float(np.clip(np.mean(probs), 0.0, 1.0)), mask_logits=full.cpu(),
                             seg_embedding=seg[0].float().cpu(),
                             vision_features=embs[-1][0].float().cpu() if return_features else None)

    # ---- persistence (see checkpoint.py) -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, device: str = "cpu") -> "DeFakerOneTeacher":
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, device=device)

    def save_pretrained(self, path, *, dtype: torch.dtype | None = None, extra: dict | None = None) -> None:
        from .checkpoint import save_checkpoint

        save_checkpoint(self, path, dtype=dtype, extra=extra)

    def param_counts(self) -> dict[str, int]:
        parts = {
            "vision_tower": self.vlm.model.vision_tower,
            "multi_modal_projector": self.vlm.model.multi_modal_projector,
            "language_model": self.vlm.model.language_model,
            "lm_head": self.vlm.lm_head,
            "text_hidden_fcs": self.text_hidden_fcs,
            "sam2.vision_encoder": self.sam2.vision_encoder,
            "sam2.prompt_encoder": self.sam2.prompt_encoder,
            "sam2.mask_decoder": self.sam2.mask_decoder,
        }
        out = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        out["sam2.other"] = sum(p.numel() for p in self.sam2.parameters()) - sum(
            v for k, v in out.items() if k.startswith("sam2."))
        out["total_params"] = sum(p.numel() for p in self.parameters())
        return out


def build_teacher(cfg: TeacherConfig, *, seed: int = 0, device: str = "cpu") -> DeFakerOneTeacher:
    """A randomly initialised teacher with the offline tokenizer (tiny/reference presets)."""
    from .prompt import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(cfg.questions)
    model = DeFakerOneTeacher(cfg, tok)
    return model.to(device).eval()
