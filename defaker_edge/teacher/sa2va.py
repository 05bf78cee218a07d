"""Sa2VA hub layout <-> transformers' native InternVL / SAM2 names (DESIGN §3).

One function, `rules(native_keys)`, says for every native tensor where it lives in a Sa2VA checkpoint;
export applies the rules forwards and import backwards, so the two directions cannot drift apart.
Rule kinds: 1:1 rename; InternViT's fused `attn.qkv` = cat(q, k, v); InternLM2's grouped `wqkv`
([kv_heads, q_per_kv + 2, head_dim, hidden]: the group's q heads, then its k, then its v);
SAM2's `point_embeddings.{0..3}` = rows of `point_embed.weight`; and `shared_image_embedding`,
which Meta's SAM2 does not store (the decoder uses the prompt encoder's `pe_layer`), filled from it.
SAM2's video/memory modules are not used for single images and are skipped on import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ArtifactError

VIS, PROJ, LLM, HEAD, SAM = ("vlm.model.vision_tower.", "vlm.model.multi_modal_projector.",
                              "vlm.model.language_model.", "vlm.lm_head.", "sam2.")
SAM_HUB = "grounding_encoder.sam2_model."
# Meta SAM2 modules that only the video predictor uses (memory bank, object pointers).
SAM_IGNORED = ("memory_attention.", "memory_encoder.", "mask_downsample.", "obj_ptr_proj.", "obj_ptr_tpos_proj.",
               "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial")
ROTARY = re.compile(r"\.rotary_emb\.inv_freq$")


@dataclass
class Rule:
    native: tuple[str, ...]
    hub: tuple[str, ...]
    kind: str = "same"  # same | qkv | wqkv | split_rows | derived
    meta: tuple = ()


def _vision(k: str) -> str:
    r = k[len(VIS):]
    fixed = {"embeddings.cls_token": "embeddings.class_embedding",
             "embeddings.position_embeddings": "embeddings.position_embedding"}
    if r in fixed:
        return "vision_model." + fixed[r]
    r = r.replace("embeddings.patch_embeddings.projection.", "embeddings.patch_embedding.")
    r = re.sub(r"^encoder\.layer\.(\d+)\.", r"encoder.layers.\1.", r)
    r = (r.replace(".attention.projection_layer.", ".attn.proj.").replace(".attention.q_norm.", ".attn.q_norm.")
         .replace(".attention.k_norm.", ".attn.k_norm.").replace(".layernorm_before.", ".norm1.")
         .replace(".layernorm_after.", ".norm2."))
    r = re.sub(r"\.lambda_([12])$", r".ls\1", r)
    return "vision_model." + r


def _llm_internlm2(k: str) -> str:
    r = k[len(LLM):]
    r = (r.replace("embed_tokens.", "tok_embeddings.").replace(".self_attn.o_proj.", ".attention.wo.")
         .replace(".mlp.gate_proj.", ".feed_forward.w1.").replace(".mlp.up_proj.", ".feed_forward.w3.")
         .replace(".mlp.down_proj.", ".feed_forward.w2.").replace(".input_layernorm.", ".attention_norm.")
         .replace(".post_attention_layernorm.", ".ffn_norm."))
    return "language_model.model." + r


def _mlp_head(r: str, depth: dict[str, int]) -> str:
    """SAM's n-layer MLPs: native proj_in / layers.j / proj_out <-> Meta layers.0 / layers.(j+1) / layers.(n-1)."""
    m = re.match(r"^(output_hypernetworks_mlps\.\d+\.|iou_prediction_head\.|pred_obj_score_head\.)(.*)$", r)
    if not m:
        return r
    head, rest = m.groups()
    n = depth[head]
    if rest.startswith("proj_in."):
        return f"{head}layers.0.{rest[len('proj_in.'):]}"
    if rest.startswith("proj_out."):
        return f"{head}layers.{n - 1}.{rest[len('proj_out.'):]}"
    lm = re.match(r"^layers\.(\d+)\.(.*)$", rest)
    return f"{head}layers.{int(lm.group(1)) + 1}.{lm.group(2)}"


def _sam(k: str, depth: dict[str, int]) -> str:
    r = k[len(SAM):]
    if r == "no_memory_embedding":
        return SAM_HUB + "no_mem_embed"
    if r.startswith("vision_encoder.backbone."):
        r = r[len("vision_encoder.backbone."):].replace("patch_embed.projection.", "patch_embed.proj.")
        r = re.sub(r"\.layer_norm([12])\.", r".norm\1.", r)
        r = r.replace(".mlp.proj_in.", ".mlp.layers.0.").replace(".mlp.proj_out.", ".mlp.layers.1.")
        return SAM_HUB + "image_encoder.trunk." + r
    m = re.match(r"^vision_encoder\.neck\.convs\.(\d+)\.(weight|bias)$", r)
    if m:
        return SAM_HUB + f"image_encoder.neck.convs.{m.group(1)}.conv.{m.group(2)}"
    if r.startswith("prompt_encoder."):
        r = r[len("prompt_encoder."):]
        r = r.replace("shared_embedding.positional_embedding", "pe_layer.positional_encoding_gaussian_matrix")
        for a, b in (("conv1", 0), ("layer_norm1", 1), ("conv2", 3), ("layer_norm2", 4), ("conv3", 6)):
            r = r.replace(f"mask_embed.{a}.", f"mask_downscaling.{b}.")
        return SAM_HUB + "sam_prompt_encoder." + r
    if r.startswith("mask_decoder."):
        r = r[len("mask_decoder."):]
        r = re.sub(r"\.layer_norm(\d)\.", r".norm\1.", r)
        r = r.replace(".o_proj.", ".out_proj.").replace("transformer.layer_norm_final_attn.",
                                                        "transformer.norm_final_attn.")
        r = r.replace(".mlp.proj_in.", ".mlp.layers.0.").replace(".mlp.proj_out.", ".mlp.layers.1.")
        r = (r.replace("upscale_conv1.", "output_upscaling.0.").replace("upscale_layer_norm.", "output_upscaling.1.")
             .replace("upscale_conv2.", "output_upscaling.3."))
        return SAM_HUB + "sam_mask_decoder." + _mlp_head(r, depth)
    raise ArtifactError(f"no Sa2VA name for native key {k!r}")


def rules(native_keys, llm_arch: str = "InternLM2ForCausalLM") -> list[Rule]:
    keys = set(native_keys)
    depth: dict[str, int] = {}
    for k in keys:
        m = re.match(r"^sam2\.mask_decoder\.(output_hypernetworks_mlps\.\d+\.|iou_prediction_head\.|pred_obj_score_head\.)layers\.(\d+)\.", k)
        if m:
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 3)  # proj_in + hidden + proj_out
    for k in keys:
        m = re.match(r"^sam2\.mask_decoder\.(output_hypernetworks_mlps\.\d+\.|iou_prediction_head\.|pred_obj_score_head\.)proj_in\.", k)
        if m:
            depth.setdefault(m.group(1), 2)
    out: list[Rule] = []
    done: set[str] = set()
    for k in sorted(keys):
        if k in done:
            continue
        if k.startswith(VIS):
            m = re.match(r"^(.*\.attention\.)q_proj\.(weight|bias)$", k)
            if m:
                trio = tuple(f"{m.group(1)}{x}_proj.{m.group(2)}" for x in "qkv")
                hub = _vision(trio[0]).replace(".attention.q_proj.", ".attn.qkv.")
                out.append(Rule(trio, (hub,), "qkv"))
                done.update(trio)
                continue
            if re.search(r"\.attention\.[kv]_proj\.", k):
                continue  # handled with its q
            if k == VIS + "layernorm.weight" or k == VIS + "layernorm.bias":
                raise ArtifactError("InternViT has no final LayerNorm: build the vision tower with use_mean_pooling=True")
            out.append(Rule((k,), (_vision(k),)))
        elif k.startswith(PROJ):
            r = k[len(PROJ):]
            for a, b in (("layer_norm.", "0."), ("linear_1.", "1."), ("linear_2.", "3.")):
                if r.startswith(a):
                    out.append(Rule((k,), ("mlp1." + b + r[len(a):],)))
        elif k.startswith(LLM):
            if llm_arch == "InternLM2ForCausalLM":
                m = re.match(r"^(.*\.self_attn\.)q_proj\.weight$", k)
                if m:
                    trio = tuple(f"{m.group(1)}{x}_proj.weight" for x in "qkv")
                    hub = _llm_internlm2(trio[0]).replace(".self_attn.q_proj.", ".attention.wqkv.")
                    out.append(Rule(trio, (hub,), "wqkv"))
                    done.update(trio)
                    continue
                if re.search(r"\.self_attn\.[kv]_proj\.", k):
                    continue
                out.append(Rule((k,), (_llm_internlm2(k),)))
            else:  # Llama/Qwen2 layout keeps HF names under language_model.model.
                out.append(Rule((k,), ("language_model.model." + k[len(LLM):],)))
        elif k.startswith(HEAD):
            name = "language_model.output." if llm_arch == "InternLM2ForCausalLM" else "language_model.lm_head."
            out.append(Rule((k,), (name + k[len(HEAD):],)))
        elif k.startswith("text_hidden_fcs."):
            out.append(Rule((k,), (k,)))
        elif k == SAM + "shared_image_embedding.positional_embedding":
            out.append(Rule((k,), (SAM_HUB + "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",),
                            "derived"))
        elif k == SAM + "prompt_encoder.point_embed.weight":
            n = 4
            out.append(Rule((k,), tuple(f"{SAM_HUB}sam_prompt_encoder.point_embeddings.{i}.weight" for i in range(n)),
                            "split_rows"))
        elif k.startswith(SAM):
            out.append(Rule((k,), (_sam(k, depth),)))
        else:
            raise ArtifactError(f"no Sa2VA name for native key {k!r}")
    return out


def _wqkv_fuse(q, k, v, n_kv: int):
    hd = k.shape[0] // n_kv
    g = q.shape[0] // (n_kv * hd)
    hidden = q.shape[1]
    qq = q.view(n_kv, g, hd, hidden)
    return torch.cat([qq, k.view(n_kv, 1, hd, hidden), v.view(n_kv, 1, hd, hidden)], dim=1).reshape(-1, hidden)


def _wqkv_split(w, n_kv: int, n_heads: int):
    g = n_heads // n_kv
    hidden = w.shape[1]
    hd = w.shape[0] // (n_kv * (g + 2))
    x = w.view(n_kv, g + 2, hd, hidden)
    return (x[:, :g].reshape(-1, hidden).clone(), x[:, g].reshape(-1, hidden).clone(),
            x[:, g + 1].reshape(-1, hidden).clone())


def to_hub(state: dict[str, torch.Tensor], text_cfg: dict, llm_arch: str = "InternLM2ForCausalLM") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for r in rules(state, llm_arch):
        ts = [state[k] for k in r.native]
        if r.kind == "same":
            out[r.hub[0]] = ts[0].clone()
        elif r.kind == "qkv":
            out[r.hub[0]] = torch.cat(ts, dim=0)
        elif r.kind == "wqkv":
            out[r.hub[0]] = _wqkv_fuse(*ts, n_kv=int(text_cfg["num_key_value_heads"]))
        elif r.kind == "split_rows":
            for i, h in enumerate(r.hub):
                out[h] = ts[0][i:i + 1].clone()
        elif r.kind == "derived":
            pe = state[SAM + "prompt_encoder.shared_embedding.positional_embedding"]
            if not torch.equal(ts[0], pe):
                raise ArtifactError("shared_image_embedding differs from the prompt encoder's positional "
                                    "embedding; Meta's SAM2 layout stores only one")
    return out


def from_hub(hub: dict[str, torch.Tensor], native_keys, text_cfg: dict, llm_arch: str, source: str) -> dict[str, torch.Tensor]:
    """Native state dict from a Sa2VA state dict; lists every missing and unexpected hub key."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for r in rules(native_keys, llm_arch):
        absent = [h for h in r.hub if h not in hub]
        if absent:
            missing.extend(absent)
            continue
        used.update(r.hub)
        ts = [hub[h] for h in r.hub]
        if r.kind in ("same", "derived"):
            out[r.native[0]] = ts[0]
        elif r.kind == "qkv":
            for n, part in zip(r.native, torch.chunk(ts[0], 3, dim=0)):
                out[n] = part.clone()
        elif r.kind == "wqkv":
            parts = _wqkv_split(ts[0], int(text_cfg["num_key_value_heads"]), int(text_cfg["num_attention_heads"]))
            out.update(dict(zip(r.native, parts)))
        elif r.kind == "split_rows":
            out[r.native[0]] = torch.cat(ts, dim=0)
    unexpected = [k for k in hub if k not in used and not ROTARY.search(k)
                  and not (k.startswith(SAM_HUB) and k[len(SAM_HUB):].startswith(SAM_IGNORED))]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(sorted(set(missing))[:12])}"
                        + (" ..." if len(set(missing)) > 12 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {', '.join(sorted(unexpected)[:12])}"
                        + (" ..." if len(unexpected) > 12 else ""))
    if problems:
        raise ArtifactError(f"{source}: Sa2VA checkpoint does not match the model: " + "; ".join(problems))
    return out


# ---- config.json ---------------------------------------------------------------------------------
_VIS_MAP = (("hidden_size", "hidden_size"), ("num_hidden_layers", "num_hidden_layers"),
            ("num_attention_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size"),
            ("image_size", "image_size"), ("patch_size", "patch_size"), ("attention_bias", "qkv_bias"),
            ("layer_norm_eps", "layer_norm_eps"), ("num_channels", "num_channels"),
            ("use_qk_norm", "qk_normalization"))
_LLM_MAP = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "vocab_size", "rms_norm_eps", "rope_theta", "max_position_embeddings")


def hub_config(cfg, vocab_size: int) -> dict:
    """Sa2VA's config.json for a TeacherConfig; our extra wiring (SAM2 size, questions, high-pass) under "defaker"."""
    vis = {"architectures": ["InternVisionModel"], "norm_type": "layer_norm", "drop_path_rate": 0.0,
           "initializer_factor": 1.0}
    for ours, theirs in _VIS_MAP:
        if ours in cfg.vision:
            vis[theirs] = cfg.vision[ours]
    vis.setdefault("image_size", cfg.force_image_size)
    llm = {"architectures": ["InternLM2ForCausalLM"], "bias": False, "tie_word_embeddings": False}
    for k in _LLM_MAP:
        if k in cfg.text:
            llm[k] = cfg.text[k]
    llm["vocab_size"] = int(cfg.text.get("vocab_size", vocab_size))
    return {"model_type": "sa2va_chat", "architectures": ["Sa2VAChatModel"], "template": cfg.template,
            "downsample_ratio": cfg.downsample_ratio, "force_image_size": cfg.force_image_size, "ps_version": "v2",
            "select_layer": cfg.select_layer, "dynamic_image_size": cfg.dynamic_image_size,
            "use_thumbnail": cfg.use_thumbnail, "min_dynamic_patch": cfg.min_dynamic_patch,
            "max_dynamic_patch": cfg.max_dynamic_patch, "vision_config": vis, "llm_config": llm,
            "defaker": cfg.to_json()}


def config_from_hub(meta: dict, source: str):
    """TeacherConfig from a Sa2VA config.json. Without our "defaker" section, SAM2 is Hiera-L (SAM2.0)."""
    from .config import TeacherConfig

    for k in ("vision_config", "llm_config"):
        if not isinstance(meta.get(k), dict):
            raise ArtifactError(f"{source}/config.json: Sa2VA config without '{k}'")
    base = TeacherConfig.from_json(meta["defaker"]) if "defaker" in meta else TeacherConfig.from_preset("defakerone-2b")
    arch = (meta["llm_config"].get("architectures") or ["InternLM2ForCausalLM"])[0]
    if arch not in ("InternLM2ForCausalLM", "LlamaForCausalLM"):
        raise ArtifactError(f"{source}: LLM {arch} is not supported (InternLM2 and Llama map onto LlamaModel)")
    vis = dict(base.vision)
    for ours, theirs in _VIS_MAP:
        if theirs in meta["vision_config"]:
            vis[ours] = meta["vision_config"][theirs]
    vis["use_mean_pooling"] = True  # InternViT has no final norm
    text = dict(base.text)
    for k in _LLM_MAP:
        if k in meta["llm_config"]:
            text[k] = meta["llm_config"][k]
    base.vision, base.text = vis, text
    base.preset = base.preset if "defaker" in meta else "sa2va"
    for k in ("template", "downsample_ratio", "force_image_size", "select_layer", "dynamic_image_size",
              "use_thumbnail", "min_dynamic_patch", "max_dynamic_patch"):
        if k in meta:
            setattr(base, k, meta[k])
    base.validate()
    return base, arch


def export_sa2va(model, path) -> None:
    """Write `model` as a Sa2VA-layout checkpoint (config.json, model.safetensors, tokenizer files)."""
    from safetensors.torch import save_file

    from ..artifacts import write_json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    hub = {k: v.contiguous() for k, v in to_hub(state, model.cfg.text).items()}
    save_file(hub, str(path / "model.safetensors"))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(path))
    write_json(path / "config.json", hub_config(model.cfg, len(model.tokenizer) if model.tokenizer else 0))


def load_sa2va(path, meta: dict, device: str = "cpu"):
    from .checkpoint import load_state_strict, read_safetensors
    from .model import DeFakerOneTeacher
    from .prompt import load_tokenizer

    path = Path(path)
    cfg, arch = config_from_hub(meta, str(path))
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ArtifactError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tok = load_tokenizer(path)
    model = DeFakerOneTeacher(cfg, tok, vocab_size=int(cfg.text.get("vocab_size") or len(tok)))
    native = from_hub(read_safetensors(path), list(model.state_dict()), cfg.text, arch, str(path))
    load_state_strict(model, native, str(path))
    return model.float().to(device).eval()
