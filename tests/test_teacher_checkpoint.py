"""Teacher checkpoints: our format, the Sa2VA hub layout (bit-exact round trip), clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from defaker_edge.errors import ArtifactError  # noqa: E402
from defaker_edge.teacher import load_teacher  # noqa: E402
from defaker_edge.teacher.sa2va import export_sa2va  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_teacher):
    return tiny_teacher


@pytest.fixture(scope="module")
def hub_dir(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("sa2va")
    export_sa2va(tiny, d)
    return d


def test_native_roundtrip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    back = load_teacher(str(tmp_path))
    a, b = tiny.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert tiny.predict(img).fake_prob == back.predict(img).fake_prob


def test_sa2va_layout_keys(hub_dir):
    cfg = json.loads((hub_dir / "config.json").read_text())
    assert cfg["model_type"] == "sa2va_chat"
    for k in ("vision_config", "llm_config", "template", "downsample_ratio", "force_image_size", "ps_version",
              "select_layer", "dynamic_image_size", "use_thumbnail", "min_dynamic_patch", "max_dynamic_patch"):
        assert k in cfg
    keys = set(load_file(str(hub_dir / "model.safetensors")))
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"vision_model", "mlp1", "language_model", "text_hidden_fcs", "grounding_encoder"}
    must = ["vision_model.encoder.layers.0.attn.qkv.weight", "vision_model.embeddings.class_embedding",
            "mlp1.0.weight", "mlp1.1.weight", "mlp1.3.weight", "text_hidden_fcs.0.weight", "text_hidden_fcs.2.weight",
            "language_model.model.layers.0.attention.wqkv.weight", "language_model.output.weight",
            "grounding_encoder.sam2_model.image_encoder.trunk.blocks.0.attn.qkv.weight",
            "grounding_encoder.sam2_model.image_encoder.neck.convs.0.conv.weight",
            "grounding_encoder.sam2_model.sam_prompt_encoder.point_embeddings.3.weight",
            "grounding_encoder.sam2_model.sam_mask_decoder.transformer.layers.0.self_attn.out_proj.weight",
            "grounding_encoder.sam2_model.sam_mask_decoder.output_upscaling.3.weight",
            "grounding_encoder.sam2_model.no_mem_embed"]
    assert not [k for k in must if k not in keys]
    assert not [k for k in keys if ".trunk." not in k and "image_encoder.blocks" in k]


def test_sa2va_roundtrip_bit_exact(tiny, hub_dir, tmp_path):
    back = load_teacher(str(hub_dir))
    a, b = tiny.state_dict(), back.state_dict()
    assert set(a) == set(b)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff
    # and back out again: the hub tensors are identical too
    export_sa2va(back, tmp_path)
    h1, h2 = load_file(str(hub_dir / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert set(h1) == set(h2) and all(torch.equal(h1[k], h2[k]) for k in h1)


def test_internlm2_wqkv_layout(tiny, hub_dir):
    """wqkv rows: per kv head, its q heads, then k, then v."""
    hub = load_file(str(hub_dir / "model.safetensors"))
    w = hub["language_model.model.layers.0.attention.wqkv.weight"]
    t = tiny.cfg.text
    n_kv, n_h, d = t["num_key_value_heads"], t["num_attention_heads"], t["hidden_size"]
    hd, g = d // n_h, n_h // n_kv
    att = tiny.vlm.model.language_model.layers[0].self_attn
    x = w.view(n_kv, g + 2, hd, d)
    assert torch.equal(x[1, 0], att.q_proj.weight.view(n_h, hd, d)[g])  # kv group 1's first q head
    assert torch.equal(x[1, g], att.k_proj.weight.view(n_kv, hd, d)[1])
    assert torch.equal(x[0, g + 1], att.v_proj.weight.view(n_kv, hd, d)[0])


def _copy_dir(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_sa2va_missing_key_named(hub_dir, tmp_path):
    d = _copy_dir(hub_dir, tmp_path / "bad")
    st = load_file(str(d / "model.safetensors"))
    del st["mlp1.1.weight"]
    st["grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.g_weight"] = torch.zeros(3)  # ignored (video)
    st["surprise.weight"] = torch.zeros(1)
    save_file(st, str(d / "model.safetensors"))
    with pytest.raises(ArtifactError) as e:
        load_teacher(str(d))
    msg = str(e.value)
    assert "mlp1.1.weight" in msg and "surprise.weight" in msg and "g_weight" not in msg


def test_native_shape_mismatch_named(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    st = load_file(str(tmp_path / "model.safetensors"))
    st["text_hidden_fcs.2.weight"] = torch.zeros(3, 3)
    save_file(st, str(tmp_path / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"text_hidden_fcs\.2\.weight"):
        load_teacher(str(tmp_path))


def test_missing_and_partial_checkpoints(tiny, tmp_path):
    with pytest.raises(ArtifactError, match="not found|not a preset"):
        load_teacher(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="config.json"):
        load_teacher(str(tmp_path / "empty"))
    tiny.save_pretrained(tmp_path / "t")
    (tmp_path / "t" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ArtifactError, match="safetensors"):
        load_teacher(str(tmp_path / "t"))
    (tmp_path / "t" / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_teacher(str(tmp_path / "t"))
    (tmp_path / "t" / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a teacher checkpoint"):
        load_teacher(str(tmp_path / "t"))
