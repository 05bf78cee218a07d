"""The compression-history stream: the block DCT against its definition, the lattice a JPEG leaves,
tables read from files, the student's stream, and a package that carries it through the runtime."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from defaker_edge.runtime import dct as D
from defaker_edge.runtime import tiling


def _smooth(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([100 + 60 * np.sin(xx / 7 + c) + 40 * np.cos(yy / 9 - c) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _jpeg(img, q, subsampling=2):
    b = io.BytesIO()
    Image.fromarray(img).save(b, "JPEG", quality=q, subsampling=subsampling)
    data = b.getvalue()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), data


def test_block_dct_matches_the_jpeg_definition():
    rng = np.random.default_rng(1)
    tile = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    y = D.luma(tile)[0].astype(np.float64)
    # F(u,v) = 1/4 C(u) C(v) sum_xy f(x,y) cos((2x+1)u pi/16) cos((2y+1)v pi/16), C(0) = 1/sqrt(2)
    c = lambda k: 1 / math.sqrt(2) if k == 0 else 1.0  # noqa: E731
    ref = np.zeros((8, 8))
    for u in range(8):
        for v in range(8):
            s = sum(y[i, j] * math.cos((2 * i + 1) * u * math.pi / 16) * math.cos((2 * j + 1) * v * math.pi / 16)
                    for i in range(8) for j in range(8))
            ref[u, v] = 0.25 * c(u) * c(v) * s
    got = D.dct_stream(tile, D.NO_TABLE[None], 63, 127)[:, :, 0, 0][0]
    want = np.minimum(np.abs(np.rint(ref.reshape(64)[D.ZIGZAG[1:]])), 127)
    assert np.array_equal(got, want)


def test_luma_is_bit_identical_to_per_channel_float32_products():
    # the runtime and the training crops must see the same numbers as the student was trained on:
    # float32 (r*0.299 + g*0.587) + b*0.114 - 128, each product rounded to float32 first (the
    # per-channel lookup tables luma() used before it was made faster)
    x = np.random.default_rng(3).integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    w = np.asarray([0.299, 0.587, 0.114], np.float32)
    lut = np.arange(256, dtype=np.float32)[None, :] * w[:, None]
    ref = lut[0][x[..., 0]] + lut[1][x[..., 1]]
    ref += lut[2][x[..., 2]]
    ref -= np.float32(128.0)
    y = D.luma(x)
    assert y.dtype == np.float32 and np.array_equal(y, ref)


def test_zigzag_is_a_permutation_in_jpeg_order():
    assert sorted(D.ZIGZAG.tolist()) == list(range(64))
    assert D.ZIGZAG[:6].tolist() == [0, 1, 8, 16, 9, 2]
    assert D.frequencies(3).tolist() == [1, 8, 16]
    with pytest.raises(ValueError):
        D.frequencies(0)


def test_table_is_natural_order_and_a_decoded_jpeg_sits_on_its_lattice():
    dec, data = _jpeg(_smooth(), 50)
    q = D.read_qtable(data)
    assert q[:8].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]  # IJG luma table at quality 50, row 0
    y = D.luma(dec[None]).reshape(1, 8, 8, 8, 8).transpose(0, 1, 3, 2, 4)
    coef = (D.dct_matrix() @ y @ D.dct_matrix().T).reshape(-1, 64)
    off_own = np.abs(coef / q - np.rint(coef / q))[:, 1:20].mean()
    shifted = D.luma(np.ascontiguousarray(dec[3:59, 5:61])[None]).reshape(1, 7, 8, 7, 8).transpose(0, 1, 3, 2, 4)
    cs = (D.dct_matrix() @ shifted @ D.dct_matrix().T).reshape(-1, 64)
    off_shifted = np.abs(cs / q - np.rint(cs / q))[:, 1:20].mean()
    assert off_own < 0.05 and off_shifted > 0.1  # on the grid: integers; off it: no lattice


def test_files_without_a_table_and_tiles_off_the_grid_get_none():
    b = io.BytesIO()
    Image.fromarray(_smooth()).save(b, "PNG")
    assert not D.read_qtable(b.getvalue()).any()
    assert not D.read_qtable(b"not an image").any()
    q = np.arange(1, 65, dtype=np.float32)
    t = D.tile_tables(q, [(0, 0), (8, 16), (0, 3)])
    assert np.array_equal(t[0], q) and np.array_equal(t[1], q) and not t[2].any()


def test_stream_values_are_clipped_integers_and_extra_inputs_shapes():
    dec, data = _jpeg(_smooth(64, 128), 90)
    tiles = np.stack([dec[:, :64], dec[:, 64:]])
    x = tiling.extra_inputs(tiles, np.stack([D.read_qtable(data)] * 2), (12, 5))
    assert x["dct"].shape == (2, 12, 8, 8) and x["qtable"].shape == (2, 64)
    assert x["dct"].dtype == np.float32 and np.array_equal(x["dct"], np.rint(x["dct"]))
    assert x["dct"].min() >= 0 and x["dct"].max() <= 5
    assert tiling.extra_inputs(tiles, None, None) == {}
    none = tiling.extra_inputs(tiles, None, (12, 5))
    assert not none["qtable"].any()
    assert tiling.parse_dct("24,10") == (24, 10) and tiling.parse_dct(None) is None
    with pytest.raises(ValueError):
        tiling.parse_dct("0,10")


def test_image_stream_sliced_per_tile_equals_the_per_tile_stream():
    """The runtime transforms the image once and slices each tile's stream (fill_extra): on a real
    JPEG with overlapping tiles, off-grid border tiles and a padded edge, the values equal
    extra_inputs' per-tile transform (the float products differ only in BLAS blocking; a rounding
    tie could flip one coefficient, and none does here)."""
    dec, data = _jpeg(_smooth(203, 261, seed=5), 85)  # not a multiple of 8: border tiles off the grid
    q = D.read_qtable(data)
    spec = tiling.TileSpec(tile=64, overlap=16)
    origins = tiling.tile_origins(*dec.shape[:2], spec)
    assert any(y % 8 or x % 8 for y, x in origins)
    tiles = tiling.cut_tiles(dec, origins, 64)
    tables = D.tile_tables(q, origins)
    ref = tiling.extra_inputs(tiles, tables, (24, 10))
    stream = D.image_stream(dec, q, 24, 10)
    assert stream.dtype == np.uint8 and stream.shape == (203 // 8, 261 // 8, 24)
    out = tiling.extra_buffers(len(tiles), 64, (24, 10))
    tiling.fill_extra(out, tiles, tables, (24, 10), origins, stream)
    assert np.array_equal(out["qtable"], ref["qtable"])
    assert np.count_nonzero(out["dct"] != ref["dct"]) == 0
    # the packages' layout, uint8 channels-last: the same values, transposed
    nhwc = tiling.extra_buffers(len(tiles), 64, (24, 10), layout=tiling.DCT_NHWC)
    assert nhwc["dct"].dtype == np.uint8 and nhwc["dct"].shape == (len(tiles), 8, 8, 24)
    tiling.fill_extra(nhwc, tiles, tables, (24, 10), origins, stream)
    assert np.array_equal(nhwc["dct"], ref["dct"].transpose(0, 2, 3, 1))
    direct = tiling.extra_inputs(tiles, tables, (24, 10), layout=tiling.DCT_NHWC)["dct"]
    assert direct.dtype == np.uint8 and np.array_equal(direct, nhwc["dct"])
    with pytest.raises(ValueError, match="newer than the runtime"):
        tiling.extra_buffers(1, 64, (24, 10), layout="nchw-f16")
    # a padded tile (the image is smaller than the tile) is transformed on its own, as before
    small = dec[:40, :56]
    t1 = tiling.cut_tiles(small, [(0, 0)], 64)
    one = tiling.extra_buffers(1, 64, (24, 10))
    tiling.fill_extra(one, t1, q[None], (24, 10), [(0, 0)], D.image_stream(small, q, 24, 10))
    assert np.array_equal(one["dct"], tiling.extra_inputs(t1, q[None], (24, 10))["dct"])


torch = pytest.importorskip("torch")


def test_student_stream_sees_the_table_and_needs_its_inputs():
    from defaker_edge.student import StudentConfig, build_student
    from defaker_edge.student.inputs import dct_spec, dummy_inputs, input_names

    torch.manual_seed(0)
    m = build_student(StudentConfig.from_preset("block-dct-s", tile=64)).eval()
    assert input_names(m) == ("image", "dct", "qtable") and dct_spec(m) == (8, 10)
    x, d, q = dummy_inputs(m, 2, 64)
    d = torch.randint(0, 11, d.shape).float()
    with torch.no_grad():
        m.dct.film.weight.normal_()  # FiLM starts at zero: give it weights so the table matters
        a = m(x, d, torch.full_like(q, 4.0))[0]
        b = m(x, d, torch.full_like(q, 40.0))[0]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="dct"):
        m(x)
    plain = build_student(StudentConfig.from_preset("block-s", tile=64))
    assert input_names(plain) == ("image",) and dct_spec(plain) is None


def test_package_with_the_stream_runs_through_the_runtime(tmp_path):
    """Export a DCT student, check that the manifest and the ONNX declare the stream, and that the
    Detector's answer for a JPEG file equals the FP32 ONNX run on its tiles with the file's table."""
    import onnxruntime as ort

    from defaker_edge.export.package import write_package
    from defaker_edge.runtime import Detector
    from defaker_edge.runtime.backends.onnxruntime import session_feeds
    from defaker_edge.student import StudentConfig, build_student

    torch.manual_seed(0)
    cfg = StudentConfig.from_preset("block-dct-s", tile=64)
    model = build_student(cfg).eval()
    with torch.no_grad():
        model.dct.film.weight.normal_(0, 0.5)
    pkg = write_package(model, cfg, tmp_path / "pkg", simplify=False)
    man = pkg.manifest
    assert man["input"]["extra"]["dct"]["freqs"] == 8 and man["input"]["extra"]["qtable"]["shape"] == [-1, 64]
    dec, data = _jpeg(_smooth(96, 80, seed=3), 75)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with_table = Detector.load(tmp_path / "pkg", precision="fp32").check(str(path))
    from_array = Detector.load(tmp_path / "pkg", precision="fp32").check(dec)  # an array: no table
    sess = ort.InferenceSession(str(tmp_path / "pkg" / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    spec = tiling.TileSpec(tile=64, overlap=pkg.manifest["input"]["overlap"])
    origins = tiling.tile_origins(96, 80, spec)
    tiles = tiling.cut_tiles(dec, origins, 64)
    fl, _ = sess.run(None, session_feeds(sess, tiles, D.tile_tables(D.read_qtable(data), origins)))
    assert with_table.logit == pytest.approx(float(np.max(fl)), abs=1e-4)
    assert with_table.logit != pytest.approx(from_array.logit, abs=1e-6)
    # every file takes the stream uint8 channels-last, and the rewrite changed no output bit
    assert man["input"]["extra"]["dct"]["shape"] == [-1, 8, 8, 8] and man["input"]["extra"]["dct"]["dtype"] == "uint8"
    assert sess.get_inputs()[1].type == "tensor(uint8)" and sess.get_inputs()[1].shape[1:] == [8, 8, 8]
    assert all(v["rewritten"] and max(v["max_abs"].values()) == 0.0 for v in man["validation"]["stream_layout"].values())
    # a package in the PyTorch export's layout (as before the change) still loads and answers the same
    old = write_package(model, cfg, tmp_path / "old", simplify=False, dct_layout=tiling.DCT_NCHW)
    assert old.manifest["input"]["extra"]["dct"]["shape"] == [-1, 8, 8, 8] and "stream_layout" not in old.manifest["validation"]
    assert old.manifest["input"]["extra"]["dct"]["dtype"] == "float32"
    be = Detector.load(tmp_path / "pkg", precision="fp32").backend
    assert be.dct_layout == tiling.DCT_NHWC
    legacy = tiling.extra_inputs(tiles, None, (8, 10))  # float32 channels-first: refused, not cast
    with pytest.raises(ValueError, match="uint8 channels-last"):
        be.run(tiling.prepare(tiles, be.input_format), legacy)
    det_old = Detector.load(tmp_path / "old", precision="fp32")
    assert det_old.backend.dct_layout == tiling.DCT_NCHW
    assert det_old.check(str(path)).logit == with_table.logit


def test_pixels_graph_runs_from_pixels_and_table(tmp_path):
    """`export --pixels-graph`: the FP32 graph with the normalization and the stream inside, declared in
    the manifest (role pixels, its own input), verified on its own golden outputs; the runtime's
    default path never picks it; run by the Detector, it answers as the numpy path does."""
    from defaker_edge.export.package import verify_package, write_package
    from defaker_edge.export.pixels_graph import PIXELS_FILE
    from defaker_edge.runtime import Detector
    from defaker_edge.runtime.backends.onnxruntime import OrtBackend
    from defaker_edge.runtime.package import load_package
    from defaker_edge.student import StudentConfig, build_student

    torch.manual_seed(0)
    cfg = StudentConfig.from_preset("block-dct-s", tile=64)
    model = build_student(cfg).eval()
    with torch.no_grad():
        model.dct.film.weight.normal_(0, 0.5)
    pkg = write_package(model, cfg, tmp_path / "pkg", simplify=False, pixels_graph=True)
    entry = next(f for f in pkg.manifest["files"] if f["path"] == PIXELS_FILE)
    assert entry["role"] == "pixels" and entry["precision"] == "fp32"
    assert entry["input"]["format"] == tiling.PIXELS and entry["input"]["shape"] == [-1, 64, 64, 3]
    assert [e["name"] for e in entry["input"]["extra_inputs"]] == ["qtable"]
    val = pkg.manifest["validation"]["pixels_graph"]
    # the in-graph stream is numpy's but for float32 rounding ties: a handful of coefficients at most
    assert val["coefficients"] > 0 and val["stream_mismatches"] <= val["coefficients"] * 1e-3
    assert verify_package(tmp_path / "pkg").ok
    p = load_package(tmp_path / "pkg")
    assert p.onnx("fp32").path == "model_fp32.onnx" and p.pixels().path == PIXELS_FILE
    dec, data = _jpeg(_smooth(96, 80, seed=3), 75)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    det = Detector.load(tmp_path / "pkg", precision="fp32", mask="full")
    ref = det.check(str(path))
    det.backend = OrtBackend(tmp_path / "pkg" / PIXELS_FILE, "fp32", 64)
    assert det.backend.input_format == tiling.PIXELS and det.backend.extra == ("qtable",)
    got = det.check(str(path))
    assert got.logit == pytest.approx(ref.logit, abs=1e-3)
    np.testing.assert_allclose(got.mask_quarter, ref.mask_quarter, atol=1e-3)


def test_pixels_graph_of_the_shipped_package_matches_its_golden_outputs(tmp_path):
    """The shipped FP32 file, made into a pixels graph, gives the golden outputs from the golden tile's
    pixels and table alone (its stream rounds every coefficient as numpy does there)."""
    import onnxruntime as ort

    from defaker_edge.export.pixels_graph import write_pixels_model
    from defaker_edge.runtime.package import DEFAULT_PACKAGE, load_golden, load_package

    pkg = load_package(DEFAULT_PACKAGE)
    g = load_golden(pkg)
    out = write_pixels_model(pkg.path_of(pkg.onnx("fp32")), tmp_path / "p.onnx", pkg.dct)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "qtable"]
    fl, ml = sess.run(["fake_logit", "mask_logits"], {"image": g.input_u8, "qtable": g.qtable})
    want_f, want_m = g.outputs["fp32"]
    assert np.abs(fl - want_f).max() <= 1e-5 and np.abs(ml - want_m).max() <= 1e-5
