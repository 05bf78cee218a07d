"""Export: ONNX agrees with PyTorch (random + real tiles), passes onnx.checker full check, dynamic batch.

Also holds the small helpers the package and TensorRT tests build their tiny package with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from defaker_edge.artifacts import sha256_file, write_json  # noqa: E402
from defaker_edge.export.golden import generated_image, golden_input, real_tiles, run_onnx  # noqa: E402
from defaker_edge.export.onnx_export import (ValidationError, check_onnx, export_onnx, io_signature,  # noqa: E402
                                             pin_io_shapes, simplify_onnx, validate_onnx)
from defaker_edge.runtime.tiling import normalize  # noqa: E402

TILE = 64


class TinyStudent(torch.nn.Module):
    """The student contract in a few convs: x[B,3,T,T] -> (fake_logit[B], mask_logits[B,1,T/4,T/4])."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())
        self.mask = torch.nn.Conv2d(16, 1, 1)
        self.cls = torch.nn.Linear(16, 1)

    def forward(self, x):
        f = self.body(x)
        return self.cls(f.mean((2, 3))).squeeze(1), self.mask(f)


def make_student(out: Path, seed: int = 0):
    """(model, cfg) saved in the student layout under `out`: the real student package where it exists."""
    torch.manual_seed(seed)
    try:
        from defaker_edge.student import StudentConfig, build_student, save_student
    except ImportError:
        model = TinyStudent().eval()
        cfg = {"format": "defaker-student/1", "family": "tiny", "preset": "tiny", "tile": TILE, "mask_stride": 4,
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        from safetensors.torch import save_file
        out.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(out / "model.safetensors"))
        write_json(out / "config.json", cfg)
        return model, cfg
    cfg = StudentConfig.from_preset("compact-s", tile=TILE)
    model = build_student(cfg).eval()
    save_student(model, cfg, out)
    return model, cfg


def make_quantized(fp32_onnx: Path, out: Path, precision: str = "int8-cpu", source_sha256: str | None = None) -> Path:
    """A quantize-stage output dir: a Q/DQ ONNX (ORT quantize_static) + manifest.json."""
    from defaker_edge.quantize.ort_static import quantize_ort_static

    tiles = normalize(real_tiles(TILE, None, max_tiles=8))
    out.mkdir(parents=True, exist_ok=True)
    # the quantize stage's wrapper survives modelopt.onnx patching onnxruntime.quantization in-process
    quantize_ort_static(fp32_onnx, out / "model.onnx", tiles, batch=1)
    write_json(out / "manifest.json", {
        "precision": precision, "source_model": {"sha256": source_sha256},
        "calibration": {"sha256": "cd" * 32, "n": 8},
        "metrics": {"fp32": {"image_auc": 0.91, "pixel_f1": 0.55}, precision: {"image_auc": 0.90, "pixel_f1": 0.54}},
        "deltas": {"image_auc": -0.01, "pixel_f1": -0.01}, "gate": {"budget": 0.02, "passed": True, "forced": False}})
    return out


def make_dataset(root: Path, n: int = 3) -> Path:
    """A tiny manifest.jsonl with PNG images (real tiles for validation and the golden input)."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        img = generated_image(96 + 16 * i, 128, seed=10 + i)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "mask": None, "label": i % 2, "domain": "natural",
                                 "kind": "authentic" if i % 2 == 0 else "splice", "split": "test"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("student")
    model, cfg = make_student(d)
    return d, model, cfg


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    _, model, _ = student
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(model, TILE, path)
    return path


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"random": rng.standard_normal((3, 3, TILE, TILE)).astype(np.float32),
            "real": normalize(real_tiles(TILE, None, max_tiles=4))}


def test_onnx_matches_torch_and_passes_full_check(student, exported):
    _, model, _ = student
    check_onnx(exported)  # raises on failure
    onnx.checker.check_model(onnx.load(str(exported)), full_check=True)
    rep = validate_onnx(model, exported, _inputs())
    assert rep.ok and set(rep.diffs) == {"random", "real"}
    for per in rep.diffs.values():
        assert set(per) == {"fake_logit", "mask_logits"}
        for d in per.values():
            assert d.max_abs < 1e-4 and d.mean_abs <= d.max_abs


def test_only_batch_axis_is_dynamic(student, exported):
    _, model, _ = student
    sig = io_signature(exported)
    assert sig == {"image": [-1, 3, TILE, TILE], "fake_logit": [-1], "mask_logits": [-1, 1, TILE // 4, TILE // 4]}
    for b in (1, 5):
        fl, ml = run_onnx(exported, np.zeros((b, 3, TILE, TILE), np.float32))
        assert fl.shape == (b,) and ml.shape == (b, 1, TILE // 4, TILE // 4)


def test_simplified_model_still_agrees(student, exported, tmp_path):
    _, model, _ = student
    p = tmp_path / "s.onnx"
    p.write_bytes(exported.read_bytes())
    simplify_onnx(p)
    check_onnx(p)
    assert validate_onnx(model, p, _inputs(1)).ok


def test_validation_fails_on_a_different_model(exported, tmp_path):
    other, _ = make_student(tmp_path / "other", seed=123)
    with torch.no_grad():  # make sure the weights really differ whatever the init
        for prm in other.parameters():
            prm.add_(0.5)
    with pytest.raises(ValidationError, match="disagrees with PyTorch"):
        validate_onnx(other, exported, _inputs())


def test_checker_failure_is_a_clear_error(tmp_path):
    from onnx import TensorProto, helper

    # an Add of float and int64 inputs is type-inconsistent: full_check must reject it
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    m = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "bad.onnx"
    onnx.save(m, str(p))
    with pytest.raises(ValidationError, match="bad.onnx"):
        check_onnx(p)


def test_real_tiles_come_from_the_dataset(tmp_path):
    manifest = make_dataset(tmp_path / "data")
    t = real_tiles(TILE, manifest, n_images=3, max_tiles=6)
    assert t.dtype == np.uint8 and t.shape[1:] == (TILE, TILE, 3) and 3 <= len(t) <= 6
    g = golden_input(TILE, manifest)
    assert g.shape == (1, TILE, TILE, 3)
    np.testing.assert_array_equal(g, golden_input(TILE, manifest))  # fixed
    assert not np.array_equal(g, golden_input(TILE, None))  # and not the generated fallback


def test_without_data_the_bundled_photos_are_used():
    from defaker_edge.data.io import load_image
    from defaker_edge.export.golden import BUNDLED, PHOTO_DIR

    if not (PHOTO_DIR / BUNDLED[0]).is_file():
        pytest.skip("bundled photos not installed")
    g = golden_input(TILE)
    np.testing.assert_array_equal(g[0], load_image(PHOTO_DIR / BUNDLED[0])[:TILE, :TILE])


def test_generated_image_is_deterministic_and_textured():
    a, b = generated_image(seed=0), generated_image(seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (768, 1024, 3) and a.std() > 20


def test_quantized_dir_helper_runs(exported, tmp_path):
    q = make_quantized(exported, tmp_path / "q")
    types = {n.op_type for n in onnx.load(str(q / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= types
    fl, ml = run_onnx(q / "model.onnx", normalize(golden_input(TILE)))
    assert np.isfinite(fl).all() and ml.shape == (1, 1, TILE // 4, TILE // 4)
    assert sha256_file(q / "model.onnx") != sha256_file(exported)


def test_symbolic_output_dims_are_pinned_to_the_contract(exported, tmp_path):
    # what a ViT export can produce: mask_logits declared [batch, 1, h, w] with h, w symbolic
    m = onnx.load(str(exported))
    for d in list(m.graph.output[1].type.tensor_type.shape.dim)[2:]:
        d.dim_param = "s"
    p = tmp_path / "sym.onnx"
    onnx.save(m, str(p))

    def declared(path):
        dims = onnx.load(str(path)).graph.output[1].type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]

    assert declared(p) == ["batch", 1, "s", "s"]
    pin_io_shapes(p, TILE)
    check_onnx(p)
    assert declared(p) == ["batch", 1, TILE // 4, TILE // 4]
    assert io_signature(p)["mask_logits"] == [-1, 1, TILE // 4, TILE // 4] and io_signature(p)["image"][0] == -1


def test_the_manifest_teacher_carries_the_chain_figures(tmp_path):
    """A student whose report names its teacher with the chain's figures hands them to the manifest."""
    import json as _json

    from defaker_edge.export.package import _provenance

    chain = {"stages": [{"name": "teacher", "image_auc": 0.56}, {"name": "int8-cpu", "image_auc": 0.57}]}
    (tmp_path / "report.json").write_text(_json.dumps(
        {"teacher": {"id": "models/program@step-18538", "sha256": "ab" * 32, "role": "stand-in", "chain": chain}}))
    _, teacher, _ = _provenance(tmp_path, [])
    assert teacher["id"] == "models/program@step-18538" and teacher["sha256"] == "ab" * 32
    assert teacher["role"] == "stand-in" and teacher["chain"] == chain
    (tmp_path / "report.json").write_text(_json.dumps({"teacher": {"spec": None}}))
    assert _provenance(tmp_path, [])[1] == {"id": None, "sha256": None}  # nothing invented


def test_package_info_prints_the_teacher_and_the_chain():
    from defaker_edge.export.cli import _chain_lines

    assert _chain_lines({}) == [] and _chain_lines({"id": None, "sha256": None}) == []
    t = {"id": "models/program@step-1", "role": "stand-in", "chain": {"stages": [
        {"name": "teacher", "params": 412792, "heldout": {"all": {"image_auc": 0.565, "pixel_f1": 0.055}}},
        {"name": "int8-cpu", "params": 223280,
         "heldout": {"all": {"image_auc": 0.583, "pixel_f1": 0.052, "retention": {"image_auc": 1.032, "pixel_f1": 0.942}}}}]}}
    lines = _chain_lines(t)
    assert lines[0] == "teacher    models/program@step-1  (stand-in)"
    assert "413 k params" in lines[2] and "AUC 0.565" in lines[2] and "kept" not in lines[2]
    assert "AUC 0.583" in lines[3] and "kept 103% / 94%" in lines[3]
