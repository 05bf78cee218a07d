"""The CPU INT8 model on raw pixels (quantize.raw_input, runtime.tiling.RAW_S2D)."""

from __future__ import annotations

import numpy as np
import pytest

from defaker_edge.runtime import tiling

T = 64


def _tiles(n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 256, (n, T, T, 3), dtype=np.uint8)
    t[0, :8] = 0  # the extremes: black and white rows
    t[0, 8:16] = 255
    t[1] = np.clip(120 + rng.normal(0, 2, (T, T, 3)), 0, 255).astype(np.uint8)  # flat, faint noise: the traces
    return t


def test_space_to_depth_layout():
    t = _tiles()
    s = tiling.space_to_depth(t)
    assert s.shape == (4, T // 2 + 1, T // 2 + 1, 12) and s.dtype == np.uint8
    pad = np.empty((4, T + 2, T + 2, 3), np.uint8)
    pad[:] = tiling.RAW_FILL
    pad[:, 1:-1, 1:-1] = t
    for dy in range(2):
        for dx in range(2):
            for c in range(3):
                np.testing.assert_array_equal(s[..., (dy * 2 + dx) * 3 + c], pad[:, dy::2, dx::2, c])
    assert tiling.tile_of(tiling.RAW_S2D, [-1, *tiling.input_shape(tiling.RAW_S2D, T)]) == T
    assert tiling.prepare(t, tiling.RAW_S2D).dtype == np.uint8
    assert tiling.prepare(t).dtype == np.float32
    with pytest.raises(ValueError, match="unknown model input format"):
        tiling.prepare(t, "u4-magic")


def _block_onnx(tmp_path, seed: int = 0):
    import torch

    from defaker_edge.export.onnx_export import export_onnx
    from defaker_edge.student import StudentConfig, build_student

    torch.manual_seed(seed)
    cfg = StudentConfig.from_preset("block-s", tile=T)
    m = build_student(cfg).eval()
    with torch.no_grad():  # BN statistics off their init, so the stem's weights matter
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2)
    return export_onnx(m, T, tmp_path / "fp32.onnx")


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fold_is_the_same_function(tmp_path):
    """Folded normalization + space-to-depth compute the FP32 model's outputs; only the pad ring's
    rounding of the mean colour (<= 0.47 grey levels) separates them."""
    from defaker_edge.quantize.raw_input import fold_raw_input, unsupported

    fp32 = _block_onnx(tmp_path)
    assert unsupported(fp32) is None
    raw = fold_raw_input(fp32, tmp_path / "raw.onnx")
    t = _tiles()
    f0, m0 = _ort(fp32).run(None, {"image": tiling.normalize(t)})
    x = np.ascontiguousarray(tiling.space_to_depth(t).transpose(0, 3, 1, 2), dtype=np.float32)
    f1, m1 = _ort(raw).run(None, {"image": x})
    scale = float(np.abs(m0).max())
    assert np.abs(f0 - f1).max() < 2e-3 * max(1.0, float(np.abs(f0).max()))
    # the ring's difference spreads through the small net's receptive field, but stays tiny
    assert np.abs(m0 - m1).mean() < 1e-3 * scale and np.abs(m0 - m1).max() < 1e-2 * scale


def test_raw_int8_cpu_model(tmp_path):
    """quantize_ort_static(raw_input=True): uint8 NHWC input, the front conv INT8 with its taps exact,
    no QuantizeLinear on the input, and outputs near FP32's through the runtime's backend."""
    import onnx

    from defaker_edge.quantize.ort_static import quantize_ort_static
    from defaker_edge.quantize.raw_input import fold_raw_input, front_weight_error
    from defaker_edge.runtime.backends.onnxruntime import OrtBackend

    fp32 = _block_onnx(tmp_path)
    calib = np.concatenate([_tiles(4, s) for s in range(4)])
    q = quantize_ort_static(fp32, tmp_path / "q.onnx", calib, batch=4, raw_input=True)
    m = onnx.load(str(q))
    assert {p.key: p.value for p in m.metadata_props}[tiling.FORMAT_KEY] == tiling.RAW_S2D
    inp = m.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.shape.dim][1:] == [T // 2 + 1, T // 2 + 1, 12]
    assert not any(n.op_type == "QuantizeLinear" and "image" in n.input for n in m.graph.node)
    producers = {o: n for n in m.graph.node for o in n.output}
    front = next(n for n in m.graph.node if n.op_type == "Conv" and n.name.startswith("/front"))
    assert producers[front.input[1]].op_type == "DequantizeLinear"  # the front end is INT8 now
    assert front_weight_error(fold_raw_input(fp32, tmp_path / "raw.onnx"), q) == 0.0

    be, ref = OrtBackend(q, "int8-cpu", T), OrtBackend(fp32, "fp32", T)
    assert be.input_format == tiling.RAW_S2D and ref.input_format == tiling.NORMALIZED
    t = _tiles(4, 9)
    f8, m8 = be.run_tiles(t)
    f32, m32 = ref.run_tiles(t)
    assert m8.shape == m32.shape == (4, 1, T // 4, T // 4)
    # INT8 moves the outputs a little; a wrong fold or layout would scramble them
    assert np.corrcoef(m8.ravel(), m32.ravel())[0, 1] > 0.98
    assert np.abs(f8 - f32).max() < 0.1 * max(1.0, float(np.abs(f32).max()))


def test_unsupported_model_keeps_float_input(tmp_path):
    """A student without the residual front end (the compact arch) is not rewritten, and says why."""
    import torch

    from defaker_edge.export.onnx_export import export_onnx
    from defaker_edge.quantize.raw_input import Unsupported, fold_raw_input, unsupported
    from defaker_edge.student import StudentConfig, build_student

    torch.manual_seed(0)
    m = build_student(StudentConfig.from_preset("compact-s", tile=T)).eval()
    p = export_onnx(m, T, tmp_path / "c.onnx")
    why = unsupported(p)
    assert why and "conv" in why.lower()
    with pytest.raises(Unsupported):
        fold_raw_input(p, tmp_path / "x.onnx")


def test_package_with_a_raw_int8_cpu_file(tmp_path):
    """export -> package verify -> Detector: the raw-pixel file's manifest entry names its own input,
    its golden outputs match, the Detector answers with it, and a manifest that hides the format is caught."""
    import json
    import shutil

    from defaker_edge.artifacts import sha256_file, write_json
    from defaker_edge.export import verify_package, write_package
    from defaker_edge.quantize.ort_static import quantize_ort_static
    from defaker_edge.runtime import Detector
    from defaker_edge.student import StudentConfig, build_student, save_student

    import torch

    from defaker_edge.export.onnx_export import export_onnx

    torch.manual_seed(0)
    cfg = StudentConfig.from_preset("block-s", tile=T)
    model = build_student(cfg).eval()
    sdir = save_student(model, cfg, tmp_path / "S")
    # a band around every probability: each verdict is re-run at FP32, which must take the normalized input
    write_json(sdir / "thresholds.json", {"temperature": 1.0, "threshold": 0.5, "band": [0.0, 1.0], "target_fpr": 0.05,
                                          "aggregate": "max", "measured": {"fpr": 0.05, "tpr": 0.5, "n": 10}})
    fp32 = export_onnx(model, T, tmp_path / "fp32.onnx")
    q = tmp_path / "Q"
    q.mkdir()
    quantize_ort_static(fp32, q / "model.onnx", np.concatenate([_tiles(4, s) for s in range(2)]), batch=4,
                        raw_input=True)
    write_json(q / "manifest.json", {"precision": "int8-cpu", "source_model": {"sha256": sha256_file(sdir / "model.safetensors")},
                                     "calibration": {"sha256": "cd" * 32, "n": 8}, "metrics": {}, "deltas": {},
                                     "gate": {"passed": True}})
    pkg = write_package(model, cfg, tmp_path / "P", model_dir=sdir, quantized=[q])
    moved = pkg.manifest["validation"]["vs_fp32_int8-cpu"]["mask_logits"]
    assert moved["mean_abs"] < 0.1 * max(1.0, moved["max_abs"]) + 0.05  # the same model, through INT8
    entry = next(f for f in pkg.manifest["files"] if f["precision"] == "int8-cpu")
    assert entry["input"]["format"] == tiling.RAW_S2D and entry["input"]["shape"] == [-1, T // 2 + 1, T // 2 + 1, 12]
    assert verify_package(pkg.path).ok
    img = np.random.default_rng(3).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    det = Detector.load(str(pkg.path), precision="int8-cpu", fallback="never")
    assert det.backend.precision == "int8-cpu" and det.info()["input_format"] == tiling.RAW_S2D
    v = det.check(img)
    assert v.precision == "int8-cpu" and v.fallback is None and v.mask.shape == (100, 90)
    det.close()
    ref = Detector.load(str(pkg.path), precision="fp32", fallback="never").check(img)
    det = Detector.load(str(pkg.path), precision="int8-cpu")  # fallback on: the band sends it to FP32
    redo = det.check(img)
    det.close()
    assert redo.precision == "fp32" and redo.fallback.startswith("band")
    assert redo.fake_prob == pytest.approx(ref.fake_prob, abs=1e-6)
    np.testing.assert_allclose(redo.heatmap, ref.heatmap, atol=1e-5)
    assert abs(v.fake_prob - ref.fake_prob) < 0.1  # INT8 on raw pixels answers close to FP32
    # the same package, its manifest no longer saying the file takes raw pixels
    bad = tmp_path / "bad"
    shutil.copytree(pkg.path, bad)
    m = json.loads((bad / "manifest.json").read_text())
    for f in m["files"]:
        f.pop("input", None)
    (bad / "manifest.json").write_text(json.dumps(m))
    rep = verify_package(bad)
    assert not rep.ok and any("model_int8_cpu.onnx" in str(p) for p in rep.problems)


def test_a_file_in_an_unknown_input_format_is_refused_clearly(tmp_path):
    """A model file from a newer exporter (an input format this runtime does not know) is not run on
    the wrong input: the backend refuses it by name, so the Detector falls back or says why."""
    import onnx

    from defaker_edge.runtime.backends.base import BackendUnavailable
    from defaker_edge.runtime.backends.onnxruntime import OrtBackend

    p = _block_onnx(tmp_path)
    m = onnx.load(str(p))
    m.metadata_props.add(key=tiling.FORMAT_KEY, value="u4-magic")
    onnx.save(m, str(tmp_path / "new.onnx"))
    with pytest.raises(BackendUnavailable, match="unknown model input format 'u4-magic'"):
        OrtBackend(tmp_path / "new.onnx", "int8-cpu", T)


def test_front_end_kept_fp32_reads_the_pixels_exactly(tmp_path):
    """--exclude on the front conv (raw pixels, the conv in FP32): the file still takes uint8, and a
    Cast feeds the FP32 conv the pixels unrounded."""
    import onnx

    from defaker_edge.quantize.ort_static import quantize_ort_static
    from defaker_edge.runtime.backends.onnxruntime import OrtBackend

    fp32 = _block_onnx(tmp_path)
    q = quantize_ort_static(fp32, tmp_path / "q.onnx", np.concatenate([_tiles(4, s) for s in range(2)]), batch=4,
                            raw_input=True, exclude_nodes=["/front/conv/Conv"])
    g = onnx.load(str(q)).graph
    producers = {o: n for n in g.node for o in n.output}
    front = next(n for n in g.node if n.op_type == "Conv" and n.name.startswith("/front"))
    assert front.input[1] not in producers  # an FP32 initializer, no DequantizeLinear
    chain = [producers[front.input[0]].op_type, producers[producers[front.input[0]].input[0]].op_type]
    assert chain in (["Cast", "Transpose"], ["DequantizeLinear", "Transpose"])  # pixels, exactly, either way
    t = _tiles(4, 5)
    f8, m8 = OrtBackend(q, "int8-cpu", T).run_tiles(t)
    f32, m32 = OrtBackend(fp32, "fp32", T).run_tiles(t)
    assert np.corrcoef(m8.ravel(), m32.ravel())[0, 1] > 0.98


def test_space_to_depth_into_a_strided_buffer_is_the_same():
    """The fast path (contiguous `out`) and the general one (a strided view) give the same bytes."""
    t = _tiles(3, 4)
    a = tiling.space_to_depth(t)
    big = np.zeros((3, T // 2 + 1, T // 2 + 1, 24), np.uint8)
    b = tiling.space_to_depth(t, out=big[..., 6:18])
    np.testing.assert_array_equal(a, b)


def test_bench_adapter_feeds_a_raw_file_its_own_input(tmp_path):
    """The bench's ONNX adapter (used when the Detector refuses a file) and the timed tile inputs
    prepare raw pixels for a raw file: the same logits as the runtime's backend on the same tiles."""
    from defaker_edge.bench.adapter import OnnxPredictor
    from defaker_edge.quantize.ort_static import quantize_ort_static
    from defaker_edge.runtime.backends.onnxruntime import OrtBackend, session_input

    q = quantize_ort_static(_block_onnx(tmp_path), tmp_path / "q.onnx", np.concatenate([_tiles(4, s) for s in range(2)]),
                            batch=4, raw_input=True)
    pred = OnnxPredictor(q, tile=T, overlap=T // 4)
    x = session_input(pred.sess, _tiles(2, 7))
    assert x.dtype == np.uint8 and x.shape == (2, T // 2 + 1, T // 2 + 1, 12)
    f, _ = pred.run_tiles(x)
    f_be, _ = OrtBackend(q, "int8-cpu", T).run_tiles(_tiles(2, 7))
    np.testing.assert_array_equal(f, f_be)
    img = np.random.default_rng(1).integers(0, 256, (2 * T, T + 8, 3), dtype=np.uint8)
    out = pred.check(img)
    assert 0.0 <= out.fake_prob <= 1.0 and out.mask.shape == img.shape[:2]


def test_a_session_without_model_metadata_takes_normalized_input():
    """bench/gpu_bench.py hands the bench adapter a torch stand-in with ORT's run() but no metadata."""
    from defaker_edge.runtime.backends.onnxruntime import input_format

    class Duck:
        def run(self, names, feeds):
            return None

    assert input_format(Duck()) == tiling.NORMALIZED
