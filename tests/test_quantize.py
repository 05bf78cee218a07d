"""Quantization: Q/DQ ONNX that ORT runs, the accuracy gate (pass, refuse, force, auto-exclude), CPU INT8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from defaker_edge.calibration import CalibConfig, build_calibration
from defaker_edge.quantize import QuantConfig, QuantGateError, quantize
from defaker_edge.quantize.sensitivity import fewest_excluded

from quant_helpers import ToyDetector, break_stem, make_toy_data

T = 128
pytest.importorskip("modelopt.torch.quantization")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("qtoy"))


@pytest.fixture(scope="module")
def calib(toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qcalib") / "C"
    build_calibration(CalibConfig(data=str(toy), out=str(out), per_domain=4, tile=T))
    return out


@pytest.fixture(scope="module")
def small_val(toy) -> str:
    """4 held-out images (2 real, 2 fake): the random-weight student's tests check files and plumbing,
    not accuracy, so they score fewer images to stay fast."""
    lines = toy.read_text().splitlines()
    out = toy.parent / "small_val.jsonl"
    out.write_text("\n".join(lines[i] for i in (16, 17, 20, 21)) + "\n")
    return str(out)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    import torch

    from defaker_edge.student import StudentConfig, build_student, save_student

    torch.manual_seed(0)
    cfg = StudentConfig.from_preset("compact-s", tile=T)
    return save_student(build_student(cfg).eval(), cfg, tmp_path_factory.mktemp("student") / "S")


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _ort(path: Path, x: np.ndarray):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(["fake_logit", "mask_logits"], {"image": x})


def test_int8_qdq_onnx_runs_on_ort_and_passes_the_gate(calib, tmp_path):
    res = quantize(ToyDetector(), calib, QuantConfig(precision="int8", out=str(tmp_path / "Q")))
    assert res.passed is True
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= _ops(res.onnx)
    from defaker_edge.calibration import load_calibration

    x = next(load_calibration(calib).batches(3))  # in-distribution input: the ranges were calibrated on it
    f8, m8 = _ort(res.onnx, x)
    f32, m32 = _ort(res.out / "model_fp32.onnx", x)
    assert f8.shape == (3,) and m8.shape == (3, 1, T // 4, T // 4)
    assert np.isfinite(m8).all() and not np.array_equal(m8, m32)  # really quantized
    assert np.abs(m8 - m32).max() < 0.1 * (np.abs(m32).max() + 1)  # and still the same model
    man = json.loads((res.out / "manifest.json").read_text())
    assert man["precision"] == "int8" and man["gate"]["passed"] is True and man["gate"]["forced"] is False
    assert man["metrics"]["fp32"]["image_auc"] == 1.0
    assert abs(man["deltas"]["image_auc"]) <= 0.005 and abs(man["deltas"]["pixel_f1"]) <= 0.01
    assert man["calibration"]["sha256"] and man["excluded_layers"] == []
    from defaker_edge.artifacts import sha256_file

    assert {f["path"]: f["sha256"] for f in man["files"]}["model.onnx"] == sha256_file(res.onnx)


def test_gate_refuses_a_broken_quantization_and_writes_nothing(calib, tmp_path):
    out = tmp_path / "Q"
    cfg = QuantConfig(precision="int8", out=str(out), post_calibrate=break_stem)
    with pytest.raises(QuantGateError) as e:
        quantize(ToyDetector(), calib, cfg)
    msg = str(e.value)
    assert "\n" not in msg and "dAUC" in msg and "> 0.005" in msg and "--auto-exclude" in msg and "--force" in msg
    assert e.value.deltas["image_auc"] > 0.005
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary leftovers either


def test_force_writes_and_records_the_failure(calib, tmp_path):
    cfg = QuantConfig(precision="int8", out=str(tmp_path / "Q"), post_calibrate=break_stem, force=True)
    res = quantize(ToyDetector(), calib, cfg)
    man = json.loads((res.out / "manifest.json").read_text())
    assert res.passed is False and man["gate"]["passed"] is False and man["gate"]["forced"] is True
    assert man["deltas"]["image_auc"] > 0.005


def test_auto_exclude_keeps_the_fewest_sensitive_layers_in_fp32(calib, tmp_path):
    cfg = QuantConfig(precision="int8", out=str(tmp_path / "Q"), post_calibrate=break_stem, auto_exclude=True)
    res = quantize(ToyDetector(), calib, cfg)
    assert res.passed is True and res.excluded_layers == ["stem"]
    man = json.loads((res.out / "manifest.json").read_text())
    assert man["sensitivity"][0]["layer"] == "stem"
    assert man["gate"]["attempts"][0]["passed"] is False and man["gate"]["attempts"][-1]["passed"] is True
    assert any(n.startswith("/stem/") for n in man["excluded_nodes"])


def test_exclude_regex_keeps_layers_in_fp32(calib, tmp_path):
    import onnx

    res = quantize(ToyDetector(), calib, QuantConfig(precision="int8", out=str(tmp_path / "Q"), exclude=["^head$"]))
    assert res.excluded_layers == ["head"]
    names = [n.name for n in onnx.load(str(res.onnx)).graph.node]
    assert not any(n.startswith("/head/") and "Quantize" in n for n in names)
    assert any(n.startswith("/mix/") and "Quantize" in n for n in names)


def test_fewest_excluded_search():
    ranked = list("abcdefghij")
    calls = []

    def passes(k_needed):
        def f(prefix):
            calls.append(len(prefix))
            return len(prefix) >= k_needed
        return f

    assert fewest_excluded(ranked, passes(3), 8) == ["a", "b", "c"]
    assert fewest_excluded(ranked, passes(1), 8) == ["a"]
    assert fewest_excluded(ranked, passes(9), 8) is None
    assert fewest_excluded(ranked, passes(6), 10) == list("abcdef")


def test_int8_cpu_static_quantization_with_speed(student_dir, calib, small_val, tmp_path):
    cfg = QuantConfig(precision="int8-cpu", out=str(tmp_path / "Q"), budget_auc=1.0, budget_f1=1.0, bench_tiles=2,
                      data=small_val)
    res = quantize(str(student_dir), calib, cfg)
    ops = _ops(res.onnx)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = np.random.default_rng(1).normal(size=(2, 3, T, T)).astype(np.float32)
    f, m = _ort(res.onnx, x)
    assert f.shape == (2,) and np.isfinite(m).all()
    man = json.loads((res.out / "manifest.json").read_text())
    sp = man["speed"]
    assert sp["ratio"] == pytest.approx(sp["fp32_ms"] / sp["int8_ms"]) and sp["ratio"] > 0 and sp["tile"] == T
    # the convs on the raw image, and the layers that make the outputs (through the Squeeze)
    assert set(man["cpu_fp32_nodes"]) == {"/rgb/rgb.0/Conv", "/srm/Conv", "/mask_head/Conv", "/Squeeze", "/cls/Gemm"}
    assert man["source_model"]["sha256"] and man["metrics"]["int8-cpu"]["n"] == 4


def test_fp8_qdq_onnx_runs_on_ort(student_dir, calib, small_val, tmp_path):
    import onnx

    cfg = QuantConfig(precision="fp8", out=str(tmp_path / "Q"), budget_auc=1.0, budget_f1=1.0, data=small_val)
    res = quantize(str(student_dir), calib, cfg)
    g = onnx.load(str(res.onnx)).graph
    inits = {i.name: i.data_type for i in g.initializer}
    q = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert q and any(inits.get(n.input[2]) == onnx.TensorProto.FLOAT8E4M3FN for n in q if len(n.input) > 2)
    f, m = _ort(res.onnx, np.zeros((1, 3, T, T), np.float32))
    assert np.isfinite(f).all() and m.shape == (1, 1, T // 4, T // 4)


def test_quantize_cli_int8(student_dir, calib, small_val, tmp_path, capsys):
    from defaker_edge.cli import main

    rc = main(["quantize", "--model", str(student_dir), "--calib", str(calib), "--precision", "int8",
               "--out", str(tmp_path / "Q"), "--budget-auc", "1", "--budget-f1", "1", "--data", small_val, "--json"])
    assert rc == 0
    man = json.loads(capsys.readouterr().out)
    assert man["precision"] == "int8" and (tmp_path / "Q" / "model.onnx").is_file()
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(tmp_path / "Q" / "model.onnx")
    rc = main(["quantize", "--model", str(student_dir), "--calib", str(tmp_path / "nope"), "--precision", "int8",
               "--out", str(tmp_path / "Q2")])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_module_names_map_to_onnx_nodes_and_exclusion_reaches_ort(student_dir, calib, tmp_path):
    """--exclude / --auto-exclude name torch modules; the ONNX paths need the exporter's node names."""
    import onnx

    from defaker_edge.calibration import load_calibration
    from defaker_edge.quantize.modelopt_ptq import export_onnx, node_module, onnx_nodes_for
    from defaker_edge.quantize.ort_static import quantize_ort_static
    from defaker_edge.student import load_student

    model, _ = load_student(student_dir)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", T)
    layers = [n for n, m in model.named_modules() if type(m).__name__ in ("Conv2d", "Linear")]
    assert layers and all(onnx_nodes_for(fp32, [n]) for n in layers)
    g = onnx.load(str(fp32)).graph
    assert all(node_module(n.name) in layers for n in g.node if n.op_type in ("Conv", "Gemm"))
    target = next(n for n in layers if n.startswith("stages.1"))
    nodes = onnx_nodes_for(fp32, [target])
    x = next(load_calibration(calib).batches(8))
    q = quantize_ort_static(fp32, tmp_path / "q.onnx", x, nodes)
    qg = onnx.load(str(q)).graph
    producers = {o: n.op_type for n in qg.node for o in n.output}
    conv_of = {n.name: n for n in qg.node if n.op_type == "Conv"}
    assert producers.get(conv_of[nodes[0]].input[1]) != "DequantizeLinear"  # kept FP32
    other = next(n for name, n in conv_of.items() if name not in nodes and "stages" in name)
    assert producers.get(other.input[1]) == "DequantizeLinear"  # the rest is quantized


def test_block_residual_front_stays_full_precision_in_int8(calib, small_val, tmp_path):
    """The block student's fixed residual filters read sub-grey-level traces of the raw image: the
    quantize stage keeps them FP32 (model.full_precision_layers) while the stem and body are INT8."""
    import onnx
    import torch

    from defaker_edge.student import StudentConfig, build_student, save_student

    torch.manual_seed(0)
    scfg = StudentConfig.from_preset("block-s", tile=T)
    sdir = save_student(build_student(scfg).eval(), scfg, tmp_path / "B")
    cfg = QuantConfig(precision="int8", out=str(tmp_path / "Q"), budget_auc=1.0, budget_f1=1.0, data=small_val)
    res = quantize(str(sdir), calib, cfg)
    man = json.loads((tmp_path / "Q" / "manifest.json").read_text())
    assert "front.conv" in man["excluded_layers"] and "stem.conv" not in man["excluded_layers"]
    g = onnx.load(str(res.onnx)).graph
    producers = {o: n.op_type for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    front = [n for n in convs if n.input[0] == g.input[0].name]  # the only conv on the raw image
    assert len(front) == 1 and producers.get(front[0].input[1]) != "DequantizeLinear"
    fp32_convs = sorted(n.name for n in convs if producers.get(n.input[1]) != "DequantizeLinear")
    # the stem runs F.conv2d on its zero-sum-projected weight, outside ModelOpt's Conv2d wrapper
    assert fp32_convs == sorted([front[0].name, "/stem/Conv"]), fp32_convs


def test_int8_cpu_float_input_never_quantizes_the_image(calib, small_val, tmp_path):
    """With --float-input, every node that reads the normalized image stays FP32 and reads it unrounded:
    ORT puts one Q/DQ pair on a tensor any quantized node consumes, so one quantized reader would feed
    every reader the 8-bit image. The fused front end reads it once: its conv, kept FP32."""
    import onnx
    import torch

    from defaker_edge.student import StudentConfig, build_student, save_student

    torch.manual_seed(0)
    scfg = StudentConfig.from_preset("block-s", tile=T)
    sdir = save_student(build_student(scfg).eval(), scfg, tmp_path / "B")
    cfg = QuantConfig(precision="int8-cpu", out=str(tmp_path / "Q"), budget_auc=1.0, budget_f1=1.0, data=small_val,
                      raw_input=False)
    res = quantize(str(sdir), calib, cfg)
    assert res.manifest["input_format"] == "f32-nchw"
    g = onnx.load(str(res.onnx)).graph
    image = g.input[0].name
    readers = [n for n in g.node if image in n.input]
    assert [n.op_type for n in readers] == ["Conv"]  # the fused residual front, on the raw image
    assert not any(n.op_type == "QuantizeLinear" and image in n.input for n in g.node)
    outputs = {o.name for o in g.output}
    producers = {o: n for n in g.node for o in n.output}
    for o in outputs:  # the logits come out unrounded: no Q/DQ pair between them and the layer that makes them
        n = producers[o]
        while n.op_type in ("Squeeze", "Reshape", "Resize"):
            assert producers[n.input[0]].op_type != "DequantizeLinear", n.name
            n = producers[n.input[0]]
        w = producers.get(n.input[1])  # an FP32 weight is an initializer, no producer
        assert n.op_type in ("Conv", "Gemm") and (w is None or w.op_type != "DequantizeLinear"), n.name
    stem = next(n for n in g.node if n.op_type == "Conv" and n.name.startswith("/stem"))
    assert producers[stem.input[1]].op_type == "DequantizeLinear"  # the stem itself is INT8


def test_int8_cpu_takes_raw_pixels_by_default(calib, small_val, tmp_path):
    """The default CPU path: uint8 pixels in (runtime.tiling.RAW_S2D), the front end INT8 too (not in
    excluded_layers), the gate scored through the runtime's backend, and the speed check run on it."""
    import onnx
    import torch

    from defaker_edge.quantize.evaluate import onnx_runner, onnx_tile
    from defaker_edge.runtime import tiling
    from defaker_edge.student import StudentConfig, build_student, save_student

    torch.manual_seed(0)
    scfg = StudentConfig.from_preset("block-s", tile=T)
    sdir = save_student(build_student(scfg).eval(), scfg, tmp_path / "B")
    cfg = QuantConfig(precision="int8-cpu", out=str(tmp_path / "Q"), budget_auc=1.0, budget_f1=1.0, data=small_val)
    res = quantize(str(sdir), calib, cfg)
    man = res.manifest
    assert man["input_format"] == tiling.RAW_S2D and "front.conv" not in man["excluded_layers"]
    assert man["front_weight_error"] == 0.0  # the residual taps survive 7-bit weights exactly
    assert "/front/conv/Conv" not in man["cpu_fp32_nodes"] and man["gate"]["passed"] is True
    assert man["speed"]["ratio"] > 0 and onnx_tile(res.onnx) == T
    g = onnx.load(str(res.onnx)).graph
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    f, m = onnx_runner(res.onnx, T)(np.random.default_rng(0).integers(0, 256, (2, T, T, 3), dtype=np.uint8))
    assert f.shape == (2,) and m.shape == (2, 1, T // 4, T // 4) and np.isfinite(m).all()


def test_int8_cpu_with_the_dct_stream_keeps_its_inputs_exact(calib, small_val, tmp_path):
    """A compression-history student on the default CPU path: raw uint8 pixels in, the dct and qtable
    inputs kept beside them (declared in metadata), the one-hot conv INT8, and the quantized file's
    answers close to FP32's on JPEG tiles with their table."""
    import onnx
    import torch

    from defaker_edge.export.golden import as_jpeg
    from defaker_edge.quantize.evaluate import onnx_runner
    from defaker_edge.runtime import tiling
    from defaker_edge.student import StudentConfig, build_student, save_student
    from defaker_edge.student.inputs import dummy_inputs

    torch.manual_seed(0)
    scfg = StudentConfig.from_preset("block-dct-s", tile=T)
    model = build_student(scfg).eval()
    sdir = save_student(model, scfg, tmp_path / "B")
    cfg = QuantConfig(precision="int8-cpu", out=str(tmp_path / "Q"), budget_auc=1.0, budget_f1=1.0, data=small_val)
    res = quantize(str(sdir), calib, cfg)
    assert res.manifest["input_format"] == tiling.RAW_S2D
    m = onnx.load(str(res.onnx))
    assert [i.name for i in m.graph.input] == ["image", "dct", "qtable"]
    assert tiling.model_dct(m) == (8, 10)
    producers = {o: n for n in m.graph.node for o in n.output}
    embed = next(n for n in m.graph.node if n.op_type == "Conv" and "/dct/embed" in n.name)
    assert producers[embed.input[1]].op_type == "DequantizeLinear"  # the one-hot's conv runs in INT8
    # ... reading the one-hot as uint8 straight from the comparison (quantize.onehot): no float
    # Cast, no QuantizeLinear between Equal and the conv's DequantizeLinear (scale 1, zero point 0)
    from onnx import TensorProto, numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dq = producers[embed.input[0]]
    assert dq.op_type == "DequantizeLinear" and float(init[dq.input[1]]) == 1.0 and int(init[dq.input[2]]) == 0
    src = producers[dq.input[0]]
    src = producers[src.input[0]] if src.op_type == "Reshape" else src
    assert src.op_type == "Cast" and src.attribute[0].i == TensorProto.UINT8
    assert producers[src.input[0]].op_type == "Equal"
    tiles, tables = as_jpeg(np.random.default_rng(1).integers(0, 256, (3, T, T, 3), dtype=np.uint8))
    fq, mq = onnx_runner(res.onnx, T)(tiles, tables)
    x = torch.from_numpy(tiling.normalize(tiles))
    extra = tiling.extra_inputs(tiles, tables, (8, 10))
    with torch.no_grad():
        f32, m32 = model(x, torch.from_numpy(extra["dct"]), torch.from_numpy(extra["qtable"]))
    assert dummy_inputs(model, 1, T)[1].shape == (1, 8, T // 8, T // 8)
    assert np.abs(fq - f32.numpy()).max() < 0.5 and np.abs(mq - m32.numpy()).mean() < 0.2
    # export.stream_layout: the stream in as uint8 channels-last, compared as uint8: the same integers
    from defaker_edge.export.golden import ort_session, run_tiles
    from defaker_edge.export.stream_layout import Unsupported, channels_last_stream

    assert channels_last_stream(m, 8, 10, uint8_compare=True)
    assert not channels_last_stream(m, 8, 10, uint8_compare=True)  # once only
    assert tiling.model_layout(m) == tiling.DCT_NHWC
    dct_in = next(i for i in m.graph.input if i.name == "dct").type.tensor_type
    assert dct_in.elem_type == TensorProto.UINT8 and [d.dim_value for d in dct_in.shape.dim][1:] == [T // 8, T // 8, 8]
    eq = next(n for n in m.graph.node if n.op_type == "Equal")
    bins = next((numpy_helper.to_array(i) for i in m.graph.initializer if i.name == eq.input[1]), None)
    if bins is None:
        bins = next(numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.output[0] == eq.input[1])
    assert bins.dtype == np.uint8
    fn, mn = run_tiles(ort_session(m.SerializeToString()), tiles, tables)
    assert np.array_equal(fn, fq) and np.array_equal(mn, mq)
    with pytest.raises(Unsupported, match="no 'dct' input"):
        bare = onnx.load(str(res.onnx))
        bare.graph.input[1].name = "other"
        channels_last_stream(bare, 8, 10)
