"""Runtime: package checks, native-resolution tiling + stitching, batching, and the fallback paths."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from defaker_edge.errors import ArtifactError, DefakerError, ImageError
from defaker_edge.runtime import Detector, InferenceError, tiling
from defaker_edge.runtime.backends.base import Backend
from defaker_edge.runtime.package import load_package
from defaker_edge.runtime.stitch import MaskStitcher, sigmoid, upsample_probs

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import TILE, ort_run, tiny_package, write_manifest, write_nan_onnx  # noqa: E402


@pytest.fixture
def pkg(tmp_path) -> Path:
    return tiny_package(tmp_path / "pkg")


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class Wrap(Backend):
    """Wraps a real backend; `mode` injects a fault, and every batch size is recorded."""

    def __init__(self, inner, mode=None):
        self.inner, self.mode, self.sizes = inner, mode, []
        self.name, self.precision, self.provider = inner.name, inner.precision, inner.provider
        self.input_format = inner.input_format
        self.dct = inner.dct

    def run(self, batch, extra=None):
        self.sizes.append(batch.shape[0])
        if self.mode == "raise":
            raise RuntimeError("device lost")
        f, m = self.inner.run(batch, extra)
        if self.mode == "nan":
            f = f.copy()
            f[0] = np.nan
        return f, m


def test_import_is_torch_free():
    code = ("import sys, defaker_edge.runtime, defaker_edge.runtime.cli, defaker_edge.runtime.server; "
            "bad = [m for m in ('torch', 'transformers', 'modelopt') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_load_prefers_int8_cpu_and_reads_manifest(pkg):
    det = Detector.load(pkg)
    assert (det.backend.name, det.backend.precision, det.backend.provider) == ("onnxruntime", "int8-cpu", "CPUExecutionProvider")
    assert det.load_fallback is None
    p = load_package(pkg)
    assert p.tile == TILE and p.thresholds.threshold == 0.5 and {f.precision for f in p.files} == {"fp32", "int8-cpu"}


def test_default_package_missing_is_a_clear_error(monkeypatch, tmp_path):
    import defaker_edge.runtime.package as package

    monkeypatch.setattr(package, "DEFAULT_PACKAGE", tmp_path / "nothing")
    with pytest.raises(ArtifactError, match="no default package"):
        Detector.load()


def test_single_tile_matches_the_model_exactly(pkg):
    det = Detector.load(pkg, precision="fp32", mask_dtype="float32")
    img = _img(TILE, TILE)
    v = det.check(img)
    f, m = ort_run(pkg / "model_fp32.onnx", tiling.normalize(img[None]))
    assert v.n_tiles == 1 and v.fallback is None
    assert v.logit == pytest.approx(float(f[0]), abs=1e-5)
    assert v.fake_prob == pytest.approx(float(sigmoid(f[0])), abs=1e-6)
    np.testing.assert_allclose(v.mask_quarter, sigmoid(m[0, 0]), atol=1e-6)
    assert v.heatmap.shape == (TILE, TILE) and v.heatmap.dtype == np.float32
    assert v.mask.dtype == np.bool_ and np.array_equal(v.mask, v.heatmap >= v.pixel_threshold)


def test_score_is_max_of_tiles_with_temperature(pkg):
    write_manifest(pkg, temperature=2.0, threshold=0.3)
    det = Detector.load(pkg, precision="fp32")
    img = _img(150, 230, seed=3)
    origins = tiling.tile_origins(150, 230, tiling.TileSpec(TILE, 16))
    f, _ = ort_run(pkg / "model_fp32.onnx", tiling.normalize(tiling.cut_tiles(img, origins, TILE)))
    v = det.check(img)
    assert v.n_tiles == len(origins) > 1
    assert v.logit == pytest.approx(float(f.max()), abs=1e-5)
    assert v.fake_prob == pytest.approx(float(sigmoid(f.max() / 2.0)), abs=1e-6)
    assert v.is_fake == (v.fake_prob >= 0.3) and v.threshold == 0.3


@pytest.mark.parametrize("hw", [(37, 50), (150, 201), (64, 300), (301, 67)])
def test_mask_is_at_native_size(pkg, hw):
    det = Detector.load(pkg)
    v = det.check(_img(*hw))
    assert "mask_full_ms" not in v.timings  # the full-size mask is made on first access only
    assert v.heatmap.shape == hw and v.heatmap.dtype == np.float16
    assert v.timings["mask_full_ms"] >= 0 and v.heatmap is v.heatmap  # made once, then kept
    assert v.mask.shape == hw and v.mask.dtype == np.bool_
    assert det.check(_img(*hw), mask="quarter").mask is None
    assert v.mask_quarter.shape == (-(-hw[0] // 4), -(-hw[1] // 4))
    assert np.all((v.heatmap >= 0) & (v.heatmap <= 1))


def test_upsample_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    lq = np.random.default_rng(0).normal(size=(13, 21)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(lq)[None, None], size=(52, 84), mode="bilinear",
                                          align_corners=False)[0, 0].sigmoid().numpy()
    got = upsample_probs(lq, 52, 84, dtype=np.float32, chunk_rows=5)  # several chunks
    np.testing.assert_allclose(got, ref, atol=1e-5)
    u8 = upsample_probs(lq, 52, 84, dtype=np.uint8)
    assert np.abs(u8.astype(int) - np.rint(ref * 255)).max() <= 1


def test_stitch_blends_overlaps_without_seams():
    # every tile predicts the same constant: the stitched map must be that constant everywhere
    h, w, T = 200, 330, 64
    st = MaskStitcher(h, w, T, 16)
    for y, x in tiling.tile_origins(h, w, tiling.TileSpec(T, 16)):
        st.add(y, x, np.full((T // 4, T // 4), 1.5, np.float32))
    np.testing.assert_allclose(st.logits_quarter(), 1.5, atol=1e-6)
    # a tile-local blob stays where it was put
    st = MaskStitcher(h, w, T, 16)
    for y, x in tiling.tile_origins(h, w, tiling.TileSpec(T, 16)):
        m = np.full((T // 4, T // 4), -5.0, np.float32)
        if (y, x) == (0, 0):
            m[2:6, 2:6] = 5.0
        st.add(y, x, m)
    q = st.logits_quarter()
    assert q[3, 3] == pytest.approx(5.0) and q[40, 70] == pytest.approx(-5.0)


def test_check_many_batches_across_images_and_matches_check(pkg):
    det = Detector.load(pkg, batch_size=8)
    imgs = [_img(70, 90, seed=s) for s in range(5)]
    per = len(tiling.tile_origins(70, 90, tiling.TileSpec(TILE, 16)))
    assert per == 6  # 30 tiles: 4 full-ish batches across images, not 5 per-image ones
    single = [det.check(im) for im in imgs]
    det.backend = spy = Wrap(det.backend)
    many = list(det.check_many(imgs))
    assert spy.sizes == [8, 8, 8, 6]
    for a, b in zip(single, many):
        assert a.fake_prob == pytest.approx(b.fake_prob, abs=1e-6)
        np.testing.assert_array_equal(a.heatmap, b.heatmap)


def test_big_image_streams_in_bounded_batches(pkg):
    det = Detector.load(pkg, batch_size=4, mask="quarter")
    det.backend = spy = Wrap(det.backend)
    v = det.check(_img(700, 900))
    assert max(spy.sizes) <= 4 and sum(spy.sizes) == v.n_tiles > 100
    assert v.mask is None and v.mask_quarter.shape == (175, 225)


def test_check_many_yields_errors_in_place(pkg, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xffnot a jpeg")
    det = Detector.load(pkg)
    out = list(det.check_many([_img(40, 40), str(bad), _img(50, 60)], errors="yield"))
    assert isinstance(out[1], ImageError) and "bad.jpg" in str(out[1])
    assert out[0].size == (40, 40) and out[2].size == (50, 60)
    with pytest.raises(ImageError):
        list(det.check_many([str(bad)]))


# ---------------------------------------------------------------- fallback at load
def test_fallback_when_int8_file_removed(pkg):
    (pkg / "model_int8_cpu.onnx").unlink()
    det = Detector.load(pkg)
    v = det.check(_img(80, 80))
    assert v.precision == "fp32" and v.fallback == "int8-cpu: file missing"
    with pytest.raises(ArtifactError, match="int8-cpu: file missing"):
        Detector.load(pkg, fallback="never")


def test_fallback_when_int8_file_corrupted(pkg):
    p = pkg / "model_int8_cpu.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    v = Detector.load(pkg).check(_img(80, 80))
    assert v.precision == "fp32" and v.fallback == "int8-cpu: sha256 mismatch"


def test_fallback_when_int8_yields_nan_at_load(pkg):
    write_nan_onnx(pkg / "model_int8_cpu.onnx")
    write_manifest(pkg)  # the hash matches: only the golden self-test can catch it
    v = Detector.load(pkg).check(_img(80, 80))
    assert v.precision == "fp32"
    assert v.fallback == "int8-cpu: golden self-test: nan/inf in output"
    with pytest.raises(ArtifactError, match="golden self-test"):
        Detector.load(pkg, fallback="never")


def test_golden_mismatch_falls_back(pkg):
    # a valid model, but not the one the golden outputs were recorded from
    from runtime_helpers import _export, _model

    _export(_model(seed=5), pkg / "model_int8_cpu.onnx")
    write_manifest(pkg)
    det = Detector.load(pkg)
    assert det.backend.precision == "fp32" and det.load_fallback.startswith("int8-cpu: golden self-test: max abs error")


def test_nothing_loads_is_a_clear_error(pkg):
    (pkg / "model_int8_cpu.onnx").unlink()
    (pkg / "model_fp32.onnx").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match=r"no backend could load: int8-cpu: file missing; fp32: sha256 mismatch"):
        Detector.load(pkg)


# ---------------------------------------------------------------- fallback at run time
def test_nan_at_run_time_reruns_on_full_precision(pkg):
    det = Detector.load(pkg)
    ref = Detector.load(pkg, precision="fp32").check(_img(100, 120))
    det.backend = Wrap(det.backend, "nan")
    v = det.check(_img(100, 120))
    assert (v.backend, v.precision, v.fallback) == ("onnxruntime", "fp32", "nan/inf in output")
    assert v.fake_prob == pytest.approx(ref.fake_prob, abs=1e-6)
    assert np.isfinite(v.fake_prob)


def test_exception_at_run_time_reruns_on_full_precision(pkg):
    det = Detector.load(pkg)
    det.backend = Wrap(det.backend, "raise")
    v = det.check(_img(100, 120))
    assert v.precision == "fp32" and v.fallback == "int8-cpu: RuntimeError: device lost"


def test_never_raises_on_run_time_faults(pkg):
    det = Detector.load(pkg, fallback="never")
    det.backend = Wrap(det.backend, "nan")
    with pytest.raises(InferenceError, match="nan/inf in output"):
        det.check(_img(100, 120))


def test_band_reruns_on_full_precision(pkg):
    write_manifest(pkg, band=[0.0, 1.0])  # every probability is "unsure"
    v = Detector.load(pkg).check(_img(100, 120))
    assert v.precision == "fp32" and v.fallback.startswith("band: ") and v.fallback.endswith("in [0, 1]")
    write_manifest(pkg, band=[0.99, 1.0], threshold=0.995)  # a band must hold its threshold (runtime.schema)
    v = Detector.load(pkg).check(_img(100, 120))
    assert v.precision == "int8-cpu" and v.fallback is None


def _tile_outputs(det, img):
    """Each tile's (logits, mask logits) on det's backend, and the origins."""
    origins = tiling.tile_origins(*img.shape[:2], det.spec)
    f, m = det.backend.run_tiles(tiling.cut_tiles(img, origins, det.spec.tile))
    return np.asarray(f).reshape(-1), np.asarray(m), origins


def test_band_reruns_only_the_tiles_that_decide(pkg):
    write_manifest(pkg, band=[0.0, 1.0], rerun_margin=0.0)  # every verdict unsure; only the best tile
    img = _img(100, 120, seed=3)
    zq, mq, origins = _tile_outputs(Detector.load(pkg, fallback="never"), img)
    zf, mf, _ = _tile_outputs(Detector.load(pkg, precision="fp32"), img)
    assert len(origins) == 9 and np.abs(zq - zf).max() > 0  # the two files differ: a real test
    v = Detector.load(pkg).check(img)
    best = int(np.argmax(zq))
    z = zq.copy()
    z[best] = zf[best]
    assert (v.precision, v.tiles_rerun, v.n_tiles) == ("fp32", 1, 9) and v.uncertain
    assert v.fallback.startswith("band: ") and v.to_json()["tiles_rerun"] == 1
    assert v.logit == pytest.approx(float(z.max()), abs=1e-6)
    # the mask: the INT8 tiles' masks, the re-run tile's replaced by its FP32 mask
    st = MaskStitcher(100, 120, TILE, Detector.load(pkg).spec.overlap)
    for i, (y, x) in enumerate(origins):
        st.add(y, x, (mf if i == best else mq)[i, 0])
    np.testing.assert_allclose(v.mask_quarter, sigmoid(st.logits_quarter()), atol=1e-5)


def test_band_rerun_margin_picks_the_tiles_near_the_best(pkg):
    img = _img(100, 120, seed=3)
    zq, _, _ = _tile_outputs(Detector.load(pkg, fallback="never"), img)
    margin = float(np.sort(zq)[-1] - np.sort(zq)[-4]) + 1e-4  # the best four tiles
    write_manifest(pkg, band=[0.0, 1.0], rerun_margin=margin)
    assert Detector.load(pkg).check(img).tiles_rerun == 4
    # a margin past every tile re-runs them all: the FP32 answer, mask included
    write_manifest(pkg, band=[0.0, 1.0], rerun_margin=1e3)
    v, f = Detector.load(pkg).check(img), Detector.load(pkg, precision="fp32").check(img)
    assert v.tiles_rerun == 9 and v.fake_prob == pytest.approx(f.fake_prob, abs=1e-6)
    np.testing.assert_allclose(v.mask_quarter, f.mask_quarter, atol=1e-5)
    # outside the band nothing is re-run
    write_manifest(pkg, band=[0.99, 1.0], threshold=0.995, rerun_margin=0.0)
    assert Detector.load(pkg).check(img).tiles_rerun == 0


def test_kept_masks_are_the_tiles_within_the_margin_of_the_best():
    from defaker_edge.runtime.detector import _Job

    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, 40).astype(np.float32)
    job = _Job(name="x", img=None, origins=[(0, 0)] * 40, logits=np.full(40, np.nan, np.float32), stitcher=None,
               keep=0.5)
    for i in rng.permutation(40):  # tiles come back in any order
        job.logits[i] = z[i]
        job.keep_mask(int(i), float(z[i]), np.full((2, 2), i, np.float32))
    want = set(np.flatnonzero(z >= z.max() - 0.5).tolist())
    assert set(job.kept) == want and 1 < len(want) < 40
    assert all(float(job.kept[i][0, 0]) == i for i in want)


def test_rerun_margin_defaults_to_the_band_width():
    from defaker_edge.runtime.package import Thresholds
    from defaker_edge.runtime.schema import check_thresholds

    th = Thresholds(temperature=2.0, threshold=0.5, band=(0.4, 0.6))
    assert th.margin() == pytest.approx(2 * 2.0 * np.log(0.6 / 0.4))
    assert Thresholds(band=(0.4, 0.6), rerun_margin=0.3).margin() == 0.3
    bad = {"temperature": 1.0, "threshold": 0.5, "band": [0.4, 0.6], "rerun_margin": -1}
    assert check_thresholds(bad)[0][0] == "thresholds.rerun_margin"


def test_bad_arguments_are_clear(pkg):
    for kw in ({"backend": "cuda"}, {"precision": "int4"}, {"fallback": "maybe"}, {"mask": "half"}):
        with pytest.raises(DefakerError):
            Detector.load(pkg, **kw)
    with pytest.raises(ArtifactError, match="int8: not in package"):
        Detector.load(pkg, precision="int8", fallback="never")
    det = Detector.load(pkg, precision="int8")  # asked for one the package lacks: falls back, says so
    assert det.backend.precision == "fp32" and det.load_fallback == "int8: not in package"


def test_malformed_manifest(pkg):
    m = json.loads((pkg / "manifest.json").read_text())
    m["format"] = "something-else"
    (pkg / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format"):
        Detector.load(pkg)
    m["format"] = "defaker-package/1"
    m["files"][0]["path"] = "../outside.onnx"
    (pkg / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="inside the package"):
        Detector.load(pkg)


def test_torch_backend_needs_a_student_dir(pkg):
    with pytest.raises(ArtifactError, match="torch fp32: .*student|torch fp32: .*not"):
        Detector.load(pkg, backend="torch", fallback="never")


def test_torch_backend_runs_a_student_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    student = pytest.importorskip("defaker_edge.student")
    from runtime_helpers import _export, write_golden

    torch.manual_seed(0)
    cfg = student.StudentConfig.from_preset("compact-s", tile=TILE)
    model = student.build_student(cfg).eval()
    sdir = tmp_path / "student"
    student.save_student(model, cfg, sdir)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    _export(model, pkg / "model_fp32.onnx")  # the package made from that student
    write_golden(pkg)
    write_manifest(pkg, tile=TILE, overlap=16)
    det = Detector.load(pkg, backend="torch", student=sdir, fallback="never")
    img = _img(100, 90, seed=4)
    v = det.check(img)
    ref = Detector.load(pkg).check(img)
    assert (v.backend, v.precision, v.fallback) == ("torch", "fp32", None) and v.provider.startswith("torch")
    assert ref.precision == "fp32" and v.fake_prob == pytest.approx(ref.fake_prob, abs=1e-4)


def test_ort_providers_keep_order_and_report_what_ran(pkg, monkeypatch):
    from defaker_edge.runtime.backends import onnxruntime as ob
    from defaker_edge.runtime.backends.base import BackendUnavailable

    assert ob.choose_providers() == ["CPUExecutionProvider"]  # this build: TRT and CUDA EPs dropped
    with pytest.raises(BackendUnavailable, match="none of the providers"):
        ob.choose_providers(["CUDAExecutionProvider"])
    # pretend the build has CUDA: ORT cannot start it and silently runs on the CPU; we must say so
    monkeypatch.setattr(ob, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ob.choose_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    be = ob.OrtBackend(pkg / "model_fp32.onnx", "fp32", TILE)
    assert be.provider == "CPUExecutionProvider"
    det = Detector.load(pkg)  # "GPU" present: auto asks for INT8 Q/DQ (absent here), then fp32
    v = det.check(_img(64, 64))
    assert v.precision == "fp32" and v.provider == "CPUExecutionProvider" and v.fallback is None


def test_every_file_is_checked_at_load(pkg):
    # a damaged file the CPU path does not use: the answer is unaffected (no fallback), but reported
    (pkg / "extra_int8.onnx").write_bytes(b"junk")
    m = json.loads((pkg / "manifest.json").read_text())
    m["files"].append({"path": "extra_int8.onnx", "sha256": "0" * 64, "precision": "int8", "format": "onnx"})
    (pkg / "manifest.json").write_text(json.dumps(m))
    det = Detector.load(pkg)
    v = det.check(_img(64, 64))
    assert v.precision == "int8-cpu" and v.fallback is None
    assert v.package_problems == ["extra_int8.onnx: sha256 mismatch"] == det.info()["package_problems"]
    assert v.to_json()["package_problems"] == ["extra_int8.onnx: sha256 mismatch"]


def test_normalize_lookup_is_bit_identical_to_the_formula():
    """The table lookup computes exactly (x/255 - mean)/std in float32, into a given buffer too."""
    t = np.random.default_rng(3).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    t[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [128, 7, 250]]
    want = (t.astype(np.float32) * np.float32(1.0 / 255.0) - np.asarray(tiling.MEAN, np.float32)) \
        / np.asarray(tiling.STD, np.float32)
    want = want.transpose(0, 3, 1, 2)
    got = tiling.normalize(t)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, want)
    buf = np.full((3, 3, 16, 24), np.nan, np.float32)
    tiling.normalize(t, out=buf[1:3])
    np.testing.assert_array_equal(buf[1:3], want)
    assert np.isnan(buf[0]).all()


class Concurrent(Wrap):
    """A Wrap that allows concurrent runs and records how many overlapped."""

    def __init__(self, inner, mode=None, concurrent=True):
        super().__init__(inner, mode)
        import threading

        self.concurrent = concurrent
        self.now = self.peak = 0
        self._lock = threading.Lock()

    def run(self, batch, extra=None):
        import time as _t

        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            _t.sleep(0.05)  # long enough for the next batch to be submitted meanwhile
            return super().run(batch, extra)
        finally:
            with self._lock:
                self.now -= 1


def test_workers_split_an_image_evenly_and_agree_with_one_worker(pkg):
    """Two workers run an image's 9 tiles as 5 + 4 at the same time, with the same answer as one."""
    img = _img(136, 136)
    assert len(tiling.tile_origins(136, 136, tiling.TileSpec(TILE, 16))) == 9
    ref = Detector.load(pkg, workers=1).check(img)
    det = Detector.load(pkg, workers=2, threads=2)
    assert det.workers == 2 and det.info()["threads_per_run"] == 1
    det.backend = spy = Concurrent(det.backend)
    v = det.check(img)
    assert sorted(spy.sizes) == [4, 5] and spy.peak == 2
    assert v.fake_prob == pytest.approx(ref.fake_prob, abs=1e-6)
    np.testing.assert_allclose(v.mask_quarter, ref.mask_quarter, atol=1e-6)
    assert v.timings["infer_ms"] > 0 and v.timings["total_ms"] >= v.timings["infer_ms"]
    # the stages add up to the total, tile cutting and normalization included (it was missing)
    t = v.timings
    assert t["prep_ms"] > 0 and t["total_ms"] >= t["decode_ms"] + t["prep_ms"] + t["infer_ms"] + t["mask_ms"]
    one = Detector.load(pkg)
    t0 = time.perf_counter()
    w = one.check(img, mask="none")
    wall = (time.perf_counter() - t0) * 1e3
    assert w.timings["prep_ms"] > 0 and w.timings["total_ms"] <= wall
    many = list(det.check_many([img, _img(70, 90, seed=1), img]))  # in order, same answers
    assert [m.fake_prob for m in many][::2] == pytest.approx([ref.fake_prob] * 2, abs=1e-6)


def test_a_backend_that_cannot_run_concurrently_runs_one_batch_at_a_time(pkg):
    det = Detector.load(pkg, workers=2, threads=2, batch_size=2)
    det.backend = spy = Concurrent(det.backend, concurrent=False)
    v = det.check(_img(136, 136))
    assert spy.peak == 1 and spy.sizes == [2, 2, 2, 2, 1] and v.n_tiles == 9


def test_a_failing_concurrent_batch_reruns_on_full_precision(pkg):
    det = Detector.load(pkg, workers=2, threads=2)
    det.backend = Concurrent(det.backend, "raise")
    v = det.check(_img(136, 136))
    assert v.precision == "fp32" and v.fallback == "int8-cpu: RuntimeError: device lost"


def test_threads_and_workers_must_be_positive(pkg):
    for kw in ({"threads": 0}, {"workers": 0}, {"workers": -1}):
        with pytest.raises(DefakerError, match="must be >= 1"):
            Detector.load(pkg, **kw)
    assert Detector.load(pkg, threads=1, workers=4).workers == 1  # never more workers than threads


def _force_int8_cpu(pkg: Path) -> None:
    """Mark the package's int8-cpu file as written although it failed its accuracy gate."""
    m = json.loads((pkg / "manifest.json").read_text())
    for f in m["files"]:
        if f["precision"] == "int8-cpu":
            f["role"] = "forced"
            f["gate"] = {"passed": False, "forced": True, "deltas": {"image_auc": 0.116, "pixel_f1": -0.03},
                         "budget": {"image_auc": 0.005, "pixel_f1": 0.01}, "n_images": 600}
    (pkg / "manifest.json").write_text(json.dumps(m))


def test_auto_never_picks_a_forced_file_and_by_name_it_warns(pkg, caplog):
    _force_int8_cpu(pkg)
    with Detector.load(pkg) as det:  # auto: the forced file is not a candidate
        assert det.backend.precision == "fp32" and det.warning is None
        v = det.check(_img(70, 90))
        assert v.warning is None and "warning" not in v.to_json()
    with caplog.at_level("WARNING"), Detector.load(pkg, precision="int8-cpu") as det:
        assert det.backend.precision == "int8-cpu"
        assert "failed its accuracy gate (forced): dimage_auc +0.116 (budget 0.005)" in det.warning
        v = det.check(_img(70, 90))
    assert "failed its accuracy gate" in caplog.text
    assert v.precision == "int8-cpu" and v.warning == det.warning and v.to_json()["warning"] == det.warning


def test_verdict_names_its_package_and_detector_is_a_context_manager(pkg):
    sha = __import__("hashlib").sha256((pkg / "manifest.json").read_bytes()).hexdigest()
    with Detector.load(pkg) as det:
        v = det.check(_img(50, 60))
        assert (v.package_id, v.manifest_sha256) == ("tiny-test", sha)
        assert {"package_id": "tiny-test", "manifest_sha256": sha}.items() <= v.to_json().items()
        assert det.info()["manifest_sha256"] == sha
        closed = []
        det.backend.close = lambda: closed.append(1)
    assert closed == [1]


def test_default_package_ships_only_files_that_passed_their_gate():
    from defaker_edge.runtime.package import DEFAULT_PACKAGE

    p = load_package(DEFAULT_PACKAGE)
    for f in p.files:
        if f.precision == "fp32":
            assert f.role == "fallback"
        else:
            assert f.role == "accelerated" and f.gate.get("passed") is True and not f.forced, f.path
    assert "fp8" not in {f.precision for f in p.files}


def test_binary_mask_is_the_heatmap_at_the_packages_pixel_threshold(pkg):
    img = _img(150, 230, seed=5)
    ref = Detector.load(pkg, mask_dtype="float32").check(img)
    cut = float(np.quantile(ref.heatmap, 0.7))  # a cut that marks about 30% of this image
    write_manifest(pkg, pixel_threshold=cut)
    v = Detector.load(pkg, mask_dtype="float32").check(img)
    assert v.pixel_threshold == pytest.approx(cut) and v.to_json()["pixel_threshold"] == pytest.approx(cut)
    np.testing.assert_array_equal(v.mask, v.heatmap >= cut)
    assert 0.2 < v.mask.mean() < 0.4
    u8 = Detector.load(pkg, mask_dtype="uint8").check(img)  # uint8 heatmaps compare in 0..255
    want = np.rint(v.heatmap.astype(np.float64) * 255) >= round(cut * 255)
    assert (u8.mask == want).mean() > 0.99  # equal but for float rounding at the level boundary


def test_a_pixel_threshold_outside_0_1_is_refused(pkg):
    write_manifest(pkg, pixel_threshold=1.5)
    with pytest.raises(ArtifactError, match="thresholds.pixel_threshold"):
        Detector.load(pkg)
