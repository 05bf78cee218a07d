"""One image in, (fake_prob, mask) out, for one package variant on one backend.

Two ways, behind one small interface so the bench can switch without touching its callers:
- `DetectorPredictor`: the runtime's own `Detector` (what users run), with the full-precision
  fallback turned off so a variant's accuracy is that variant's, not the FP32 model's.
- `OnnxPredictor`: an ONNX Runtime session on the package's file, fed by the runtime's tiling and
  mask stitcher (`defaker_edge.runtime.tiling`, `.stitch`). Used when the runtime refuses the
  variant (e.g. a golden mismatch: the bench still measures it raw), and always for per-tile latency.
Both return the same `Prediction`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError
from ..runtime.dct import read_qtable, tile_tables
from ..runtime.stitch import MaskStitcher, sigmoid
from ..runtime.tiling import TileSpec, aggregate_logits, cut_tiles, extra_inputs, prepare, tile_origins

log = logging.getLogger(__name__)

# ORT provider names by the bench's short backend names.
PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
             "ort-trt": "TensorrtExecutionProvider"}


@dataclass
class Prediction:
    fake_prob: float
    mask: np.ndarray  # float32 [H, W] probabilities
    fallback: str | None = None  # why another path answered, if one did
    timings: dict = field(default_factory=dict)
    # the score fell in the package's band: a Detector with fallback on re-runs this image's deciding
    # tiles at FP32 (the bench's Detector has it off, so the variant's own answer is scored)
    uncertain: bool = False


def make_session(path: str | Path, provider: str = "CPUExecutionProvider", threads: int = 0):
    """An ORT session that runs only on `provider` (plus CPU for ops the provider lacks); raises if
    the provider is not available rather than silently measuring the CPU instead."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnxruntime", "the benchmark", "pip install onnxruntime") from None
    if provider not in ort.get_available_providers():
        raise RuntimeError(f"{provider} is not available in this onnxruntime build")
    from ..runtime.backends.onnxruntime import session_options

    # the runtime's own options (quiet, no spin-waiting), so the adapter path measures what ships
    so = session_options(threads if threads > 0 else None)
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    ran = sess.get_providers()
    if ran[0] != provider:
        raise RuntimeError(f"session fell back to {ran[0]} instead of {provider}")
    return sess


def static_batch(sess) -> int | None:
    """The model's batch size if it is fixed, None if dynamic."""
    dim = sess.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxPredictor:
    """Tiles -> ORT session -> max-aggregated image logit and blended mask, as the runtime does it."""

    kind = "onnx-adapter"

    def __init__(self, path: str | Path, *, tile: int, overlap: int, temperature: float = 1.0,
                 provider: str = "CPUExecutionProvider", threads: int = 0, batch: int | None = None,
                 session=None):
        self.sess = session if session is not None else make_session(path, provider, threads)
        self.spec = TileSpec(tile=tile, overlap=overlap)
        self.temperature = temperature
        fixed = static_batch(self.sess)
        self.batch = fixed or batch  # None: all tiles of an image in one batch (what the runtime does)
        self.in_name = self.sess.get_inputs()[0].name
        self.out_names = [o.name for o in self.sess.get_outputs()]
        from ..runtime.backends.onnxruntime import input_format, session_dct, session_layout

        self.input_format = input_format(self.sess)
        self.dct = session_dct(self.sess)
        self.dct_layout = session_layout(self.sess)

    def run_tiles(self, x: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs [N, ...] (tiling.prepare; the DCT stream's in `extra`, tiling.extra_inputs) ->
        (fake_logit [N], mask_logits [N,1,t,t]), chunked by the batch size."""
        bs = self.batch or len(x)
        logits, masks = [], []
        for i in range(0, len(x), bs):
            feeds = {self.in_name: x[i:i + bs], **{k: v[i:i + bs] for k, v in (extra or {}).items()}}
            fl, ml = self.sess.run(self.out_names[:2], feeds)
            logits.append(np.asarray(fl).reshape(-1))
            masks.append(np.asarray(ml))
        return np.concatenate(logits), np.concatenate(masks)

    def check(self, img: np.ndarray, source: str | Path | None = None) -> Prediction:
        """`img` decoded; `source` its file, whose JPEG table the DCT stream reads (None: no table)."""
        t0 = time.perf_counter()
        h, w = img.shape[:2]
        T = self.spec.tile
        origins = tile_origins(h, w, self.spec)
        tiles = cut_tiles(img, origins, T)
        x = prepare(tiles, self.input_format)
        tables = tile_tables(read_qtable(source), origins) if (source is not None and self.dct) else None
        extra = extra_inputs(tiles, tables, self.dct, self.input_format, self.dct_layout)
        t1 = time.perf_counter()
        fl, ml = self.run_tiles(x, extra)
        t2 = time.perf_counter()
        # the runtime's own stitcher, so the raw-ONNX path blends and upsamples exactly as it does
        stitcher = MaskStitcher(h, w, T, self.spec.overlap)
        for (y, x0), m in zip(origins, ml):
            stitcher.add(y, x0, m)
        mask = stitcher.probs_full(np.float32)
        prob = float(sigmoid(np.float64(aggregate_logits(fl)) / self.temperature))
        t3 = time.perf_counter()
        return Prediction(prob, mask, None, {"preprocess_ms": (t1 - t0) * 1e3, "model_ms": (t2 - t1) * 1e3,
                                             "postprocess_ms": (t3 - t2) * 1e3, "tiles": len(origins)})


class DetectorPredictor:
    """The runtime's Detector for one precision on one ORT provider, fallback='never', so the
    answer always comes from this variant (an image inside the uncertainty band is answered by
    the variant too, not re-run at FP32)."""

    kind = "detector"

    def __init__(self, package: str | Path, *, precision: str, provider: str = "CPUExecutionProvider",
                 threads: int = 0):
        from ..runtime import Detector  # ImportError when the runtime is not there

        self.det = Detector.load(str(package), backend="onnxruntime", precision=precision, providers=[provider],
                                 fallback="never", threads=threads or None, mask_dtype="float32")
        got = self.det.backend.precision
        if got != precision:
            raise RuntimeError(f"Detector loaded precision {got!r}, asked for {precision!r}")
        self.session = getattr(self.det.backend, "session", None)

    def check(self, img: np.ndarray, source: str | Path | None = None) -> Prediction:
        """The file when given (the Detector reads its JPEG table, as on a device), else the pixels."""
        v = self.det.check(str(source) if source is not None else img)
        return Prediction(float(v.fake_prob), np.asarray(v.heatmap, dtype=np.float32), v.fallback,
                          dict(v.timings or {}, tiles=v.n_tiles), uncertain=v.uncertain)


def make_predictor(package, variant, *, provider: str, tile: int, overlap: int, temperature: float,
                   threads: int = 0, prefer_detector: bool = True):
    """The runtime's Detector if it loads this variant, else the ONNX adapter. Returns (predictor, note)."""
    note = None
    if prefer_detector:
        try:
            return DetectorPredictor(package, precision=variant.precision, provider=provider, threads=threads), None
        except ImportError as e:
            note = f"runtime Detector not importable ({e}); ONNX adapter used"
        except Exception as e:  # the runtime may refuse a variant (e.g. a golden mismatch): say so, measure raw
            note = f"Detector refused {variant.precision}: {type(e).__name__}: {e}; ONNX adapter used"
        log.info(note)
    return OnnxPredictor(variant.path, tile=tile, overlap=overlap, temperature=temperature,
                         provider=provider, threads=threads), note
