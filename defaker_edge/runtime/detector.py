"""The Detector: decode -> native-resolution tiles -> backend -> stitch -> Verdict (DESIGN §5, §6).

Load: the candidates for the asked backend/precision are tried in order (engine, INT8, ...,
finally the FP32 ONNX); each must exist, match its sha256 and pass the package's golden
self-test, else the next is loaded and the reason kept. Run: tiles stream through the backend in
batches (never all tiles of an image at once); an exception, NaN/Inf, or a probability inside the
calibrated band re-runs that image on the full-precision path. The Verdict says which path
answered and why.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image as PILImage

from ..data.io import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, ImageSource, clean_error, load_image
from ..errors import ArtifactError, DefakerError
from . import tiling
from .dct import image_stream, read_qtable, tile_tables
from .backends.base import Backend, BackendUnavailable
from .package import (FileEntry, Golden, Package, golden_mismatch, load_golden, load_package, resolve_package_dir,
                      verify_file)
from .signing import SignatureError, trusted_key_from_env, verify_signature
from .stitch import MaskStitcher, sigmoid, upsample_probs

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "int8", "int8-cpu", "fp8")
MASK_MODES = ("full", "quarter", "none")
# used when a package's golden block gives no tolerance for a precision (the export stage's defaults)
DEFAULT_ATOL = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1, "int8-cpu": 1e-1, "fp8": 1e-1}
# An engine is compared with the ONNX golden output of its precision (or fp32): TensorRT picks other
# kernels than ORT, so the bound is loose; it catches a wrong, broken or NaN engine, not rounding.
# A manifest entry may carry its own "golden_atol".
ENGINE_ATOL = 0.5


class InferenceError(DefakerError):
    """The model could not produce a usable answer for an image (and no fallback could)."""


@dataclass
class Verdict:
    """One image's answer.

    `heatmap` is [H, W] edit probabilities at the image's own size (float16 by default, to bound
    memory; uint8 0..255 or float32 on request), None with mask='quarter'/'none'. It is made from
    `mask_quarter`'s logits on first access and kept: a check that only needs the verdict (a camera
    app's badge) does not pay for upsampling millions of pixels; `timings["mask_full_ms"]` records
    what the access cost. `mask` is the decision: bool [H, W], heatmap >= `pixel_threshold` (the
    package's calibrated cut; the soft mask rarely reaches 0.5, so a 0.5 cut would mark nothing).
    """

    fake_prob: float
    is_fake: bool
    threshold: float
    backend: str
    precision: str
    fallback: str | None
    timings: dict[str, float]
    logit: float = float("nan")  # aggregated tile logit, before temperature
    provider: str = ""
    image: str | None = None
    size: tuple[int, int] = (0, 0)  # (H, W)
    n_tiles: int = 0
    mask_quarter: np.ndarray | None = field(default=None, repr=False)  # float32 [ceil(H/4), ceil(W/4)] probs
    package_problems: list[str] = field(default_factory=list)  # damaged files the answer did not need
    package_id: str | None = None  # the manifest's model_id ...
    manifest_sha256: str = ""  # ... and its sha256: which package made this verdict
    warning: str | None = None  # e.g. the answering file failed its accuracy gate (loaded by name)
    pixel_threshold: float = 0.5  # heatmap >= this is `mask` (the package's thresholds.pixel_threshold)
    # the score fell inside the calibrated uncertainty band: re-checked at FP32 when that path exists
    # (then precision is "fp32" and `fallback` starts "band: ..."); the overlay's caption says so
    uncertain: bool = False
    # tiles run again at FP32: a band re-run runs only the tiles that could decide the verdict
    # (thresholds.rerun_margin); an error re-runs them all; 0 when the first answer stood
    tiles_rerun: int = 0
    # the file the image was read from, for save_overlay (bytes, arrays and PIL images are not kept)
    source: str | None = None
    # the decoded RGB pixels, uint8 [H, W, 3], kept only when asked (check(..., keep_pixels=True)): the
    # overlay is drawn on them without decoding the file a second time
    pixels: np.ndarray | None = field(default=None, repr=False)
    # the full-size heatmap, or how to make it: (quarter logits, dtype) until first access
    _heat: np.ndarray | None = field(default=None, repr=False)
    _mask_src: tuple[np.ndarray, np.dtype] | None = field(default=None, repr=False)

    @property
    def heatmap(self) -> np.ndarray | None:
        """Edit probabilities [H, W] (the soft mask), made on first access."""
        if self._heat is None and self._mask_src is not None:
            t = time.perf_counter()
            logits_q, dtype = self._mask_src
            self._heat = upsample_probs(logits_q, self.size[0], self.size[1], dtype=dtype)
            self._mask_src = None
            self.timings["mask_full_ms"] = (time.perf_counter() - t) * 1e3
        return self._heat

    @property
    def mask(self) -> np.ndarray | None:
        """The binary mask, bool [H, W]: heatmap >= pixel_threshold (uint8 heatmaps compare in 0..255)."""
        heat = self.heatmap
        if heat is None:
            return None
        cut = self.pixel_threshold
        return heat >= (round(cut * 255) if heat.dtype == np.uint8 else cut)

    def save_mask(self, path: str | os.PathLike) -> Path:
        """Write `mask` (the decision) as an 8-bit grey PNG at the image's size: 255 edited, 0
        untouched, which any image viewer opens. Returns the path. `save_heatmap` writes the
        probabilities."""
        from ..artifacts import atomic_path
        from ..data.io import save_mask_png

        m = self.mask
        if m is None:
            raise DefakerError(f"{self.image or 'verdict'}: no full-size mask to save (checked with "
                               "mask='none' or 'quarter'; check with mask='full')")
        with atomic_path(path) as tmp:  # a reader (or a crash) never meets half a file
            save_mask_png(tmp, m)
        return Path(path)

    def save_heatmap(self, path: str | os.PathLike) -> Path:
        """Write `heatmap` (the edit probabilities) as an 8-bit grey PNG, probability x 255."""
        from ..artifacts import atomic_path
        from ..data.io import save_mask_png

        h = self.heatmap
        if h is None:
            raise DefakerError(f"{self.image or 'verdict'}: no full-size heatmap to save (checked with "
                               "mask='none' or 'quarter'; check with mask='full')")
        with atomic_path(path) as tmp:
            save_mask_png(tmp, h)
        return Path(path)

    def save_overlay(self, path: str | os.PathLike, image: Any = None, *, quality: int = 90) -> Path:
        """Write the image with the heatmap drawn on it (a tint, the binary mask's outline) and the verdict as a
        caption: JPEG, or PNG when `path` ends in .png. `image` is what was checked; by default
        the file this verdict was read from (give it for bytes, arrays and PIL images)."""
        from ..artifacts import atomic_path
        from .overlay import caption_of, save_overlay

        m = self.heatmap
        if m is None:
            raise DefakerError(f"{self.image or 'verdict'}: no full-size mask to draw (checked with "
                               "mask='none' or 'quarter'; check with mask='full')")
        h, w = self.size
        if image is None and self.pixels is not None:
            pixels = self.pixels  # kept from the check: no second decode
        else:
            src = image if image is not None else self.source
            if src is None:
                raise DefakerError(f"{self.image or 'verdict'}: the image was not a file: pass it again, "
                                   "save_overlay(path, image=...), or check it with keep_pixels=True")
            pixels, _ = pixels_of(src, self.image, max_pixels=max(DEFAULT_MAX_PIXELS, h * w))
        if pixels.shape[:2] != (h, w):
            raise DefakerError(f"{self.image or 'verdict'}: image is {pixels.shape[1]}x{pixels.shape[0]}, "
                               f"the verdict's mask {w}x{h}: not the image that was checked")
        fmt = "PNG" if str(path).lower().endswith(".png") else "JPEG"
        with atomic_path(path) as tmp:
            save_overlay(tmp, pixels, m, quality=quality, caption=caption_of(self), format=fmt,
                         cut=self.pixel_threshold)
        return Path(path)

    def to_json(self) -> dict[str, Any]:
        """The JSON line of `defaker check --json` and the server (no mask arrays)."""
        return {
            "image": self.image, "fake_prob": round(self.fake_prob, 6), "is_fake": self.is_fake,
            "threshold": self.threshold, "pixel_threshold": self.pixel_threshold,
            "backend": self.backend, "precision": self.precision,
            "provider": self.provider, "fallback": self.fallback,
            "ms": round(self.timings.get("total_ms", float("nan")), 2),
            "height": self.size[0], "width": self.size[1], "tiles": self.n_tiles, "tiles_rerun": self.tiles_rerun,
            "package_id": self.package_id, "manifest_sha256": self.manifest_sha256,
            **({"warning": self.warning} if self.warning else {}),
            **({"package_problems": self.package_problems} if self.package_problems else {}),
        }


@dataclass
class _Job:
    name: str
    img: np.ndarray | None
    origins: list[tuple[int, int]]
    logits: np.ndarray
    stitcher: MaskStitcher | None
    decode_ms: float = 0.0
    # cutting and normalizing this image's tiles (the time the backend does not see)
    prep_ms: float = 0.0
    # the backend's time on this image's tiles: its share of each batch (concurrent batches each count)
    infer_ms: float = 0.0
    done: int = 0
    error: str | None = None  # a run-time problem on this path (exception, nan)
    decode_error: DefakerError | None = None
    # the file's luma quantization table (runtime.dct; None: an array, or no JPEG): the
    # compression-history stream's second input
    qtable: np.ndarray | None = None
    source: str | None = None  # the path the image came from (Verdict.source)
    # the stream's coefficients of the whole image, computed once (dct.image_stream), sliced per tile
    stream: np.ndarray | None = None
    # for a band re-run of only the deciding tiles: the mask logits of the tiles within `keep` (raw
    # logits) of the best tile so far, by tile index (None: not kept). Pruned as the best rises, so a
    # 100 MP image holds a few tiles' masks, not all
    keep: float | None = None
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    top: float = -np.inf

    def keep_mask(self, i: int, logit: float, mask: np.ndarray) -> None:
        if logit < self.top - self.keep:
            return
        self.kept[i] = np.array(mask, np.float32)
        if logit > self.top:
            self.top = logit
            cut = logit - self.keep
            for j in [j for j in self.kept if self.logits[j] < cut]:
                del self.kept[j]

    @property
    def n(self) -> int:
        return len(self.origins)


@dataclass(frozen=True)
class _Candidate:
    kind: str  # "tensorrt" | "onnxruntime" | "torch"
    precision: str
    entry: FileEntry | None

    @property
    def label(self) -> str:
        if self.kind == "torch":
            return "torch fp32"
        return self.entry.label if self.entry else self.precision


class _TileMasks(dict):
    """A stitcher stand-in for a partial re-run: keeps each tile's mask logits by its origin."""

    def add(self, y0: int, x0: int, mask_logits: np.ndarray) -> None:
        self[(y0, x0)] = np.array(mask_logits, np.float32)


def pixels_of(src: Any, name: str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT,
              qtable: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 [H, W, 3] of any input the Detector takes (path, bytes, array, PIL image), and,
    with qtable=True, the file's luma quantization table (None where there is no file).

    A PIL image is taken as it stands, like an array (apply ImageOps.exif_transpose first to a
    photo opened by hand), except that an unmodified JPEG from Image.open keeps its table."""
    if isinstance(src, PILImage.Image):
        return _pil_pixels(src, name, max_pixels), (_pil_qtable(src) if qtable else None)
    img = load_image(src, max_pixels=max_pixels, name=name, decode_timeout=decode_timeout)
    q = read_qtable(src) if qtable and isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)) else None
    return img, q


def _pil_pixels(im: "PILImage.Image", name: str | None, max_pixels: int) -> np.ndarray:
    from ..data.io import _to_rgb  # the one mode conversion (16-bit, palette, alpha...) files get too
    from ..errors import ImageError

    label = name or getattr(im, "filename", None) or "<PIL image>"
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(label, f"invalid size {w}x{h}")
    if w * h > max_pixels:  # before load(): an Image.open'ed file decodes only now
        raise ImageError(label, f"{w}x{h} = {w * h / 1e6:.1f} MP is over the {max_pixels / 1e6:.0f} MP limit")
    try:
        im.load()
        out = _to_rgb(im)
    except Exception as e:  # a lazily opened, damaged file fails here
        raise ImageError(label, f"cannot read the PIL image ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(out)


def _pil_qtable(im: "PILImage.Image") -> np.ndarray | None:
    t = (getattr(im, "quantization", None) or {}).get(0)
    return np.asarray(t, np.float32) if t is not None and len(t) == 64 else None


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Detector:
    """Use `Detector.load(...)`; then `check(image)` or `check_many(images)`. Thread-safe for `check`.

    `with Detector.load(...) as det:` closes its sessions and thread pools on the way out."""

    def __init__(self, pkg: Package, backend: Backend, *, fallback: str, load_fallback: str | None,
                 batch_size: int, mask: str, mask_dtype: str, max_pixels: int, providers: Sequence[str] | None,
                 golden: Golden | None, threads: int | None = None, workers: int = 1,
                 decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT):
        self.package = pkg
        self.backend = backend
        self.fallback_mode = fallback
        self.load_fallback = load_fallback  # why the preferred candidate(s) did not load, or None
        self.batch_size = batch_size
        self.mask_mode = mask
        self.mask_dtype = np.dtype(mask_dtype)
        self.max_pixels = max_pixels
        self.decode_timeout = decode_timeout  # seconds of decoding per 10 MP (data.io.decode_limit_s)
        self.spec = tiling.TileSpec(tile=pkg.tile, overlap=pkg.overlap)
        self._providers = providers
        self._threads = threads
        self._golden = golden
        self._fp: Backend | None = None
        self._fp_error: str | None = None
        self._fp_lock = threading.Lock()
        self.package_problems: list[str] = []  # files of the package that failed their check at load
        # set when the loaded file failed its accuracy gate (only ever loaded when asked for by name)
        self.warning: str | None = None
        self.signed_by: str | None = None  # the trusted key's id when a signature was enforced at load
        # Tile cutting + normalization is memory-bound numpy work that releases the GIL and runs
        # while the backend is idle: split across the cores it is ~2x shorter on a 2-core CPU.
        # concurrent tile batches (see _stream); `threads` is each run's intra-op threads
        self.workers = max(1, int(workers))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="defaker-run") if self.workers > 1 else None
        self._prep_n = max(1, min(4, (threads or os.cpu_count() or 1) * self.workers))
        self._prep = ThreadPoolExecutor(self._prep_n, thread_name_prefix="defaker-prep") if self._prep_n > 1 else None
        # a verdict in the band re-runs at FP32 only the tiles within this many logits of its best
        # tile (Thresholds.margin); their INT8 masks are kept while the tiles stream by, to be swapped
        th = pkg.thresholds
        self._rerun_margin = (th.margin() if th.band and backend.precision != "fp32" and fallback != "never"
                              else None)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, package: str | Path | None = None, backend: str = "auto", precision: str = "auto",
             providers: Sequence[str] | None = None, fallback: str = "auto", *, batch_size: int = 8,
             student: str | Path | None = None, mask: str = "full", mask_dtype: str = "float16",
             max_pixels: int = DEFAULT_MAX_PIXELS, threads: int | None = None, workers: int | None = None,
             trt: Any = None, cudart: Any = None,
             decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT,
             trusted_key: str | Path | bytes | None = None) -> "Detector":
        """Load a package (None = the default one) on the best backend that passes its checks.

        backend: auto | tensorrt | onnxruntime | torch (torch needs `student`, a student dir, or a
        `student/` folder in the package). precision: auto (CPU: int8-cpu; GPU: engine, then INT8
        Q/DQ on the CUDA EP; else fp32) or one of fp32, fp16, int8, int8-cpu, fp8. "auto" never
        picks a file that failed its accuracy gate (manifest gate.passed false: forced); named
        explicitly, such a file loads with a warning (`Detector.warning`, `Verdict.warning`).
        fallback: auto (fall back to the FP32 ONNX, recording why) | never (raise instead).
        threads: the CPU threads a check may use (None: the cores; 1 keeps the whole check on one
        core). workers: tile batches run at once on a CPU backend, each with threads // workers
        ONNX Runtime intra-op threads (default 1: one batch on all threads); GPU backends run one
        batch at a time. Measured on the 2-core development VM, 2 workers of 1 thread were slower
        per 1024x1024 image than 1 worker of 2 threads (scripts/runtime_workers.py times both on
        your CPU); on many-core CPUs, where one small conv cannot keep every thread busy, more
        workers may pay. decode_timeout: seconds of decoding allowed per 10 MP of image (a file
        that takes longer is an ImageError); None: no limit.
        trusted_key: an Ed25519 public key (PEM path or PEM bytes; default $DEFAKER_TRUSTED_KEY):
        when set, the package must carry a signature by that key over every one of its files
        (runtime.signing), else the load is refused with a SignatureError; unset, an unsigned
        package loads as before.
        """
        if backend not in BACKENDS:
            raise DefakerError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise DefakerError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if fallback not in ("auto", "never"):
            raise DefakerError(f"fallback must be 'auto' or 'never', got {fallback!r}")
        if mask not in MASK_MODES:
            raise DefakerError(f"mask must be one of {MASK_MODES}, got {mask!r}")
        if mask_dtype not in ("float16", "float32", "uint8"):
            raise DefakerError(f"mask_dtype must be float16, float32 or uint8, got {mask_dtype!r}")
        if batch_size < 1:
            raise DefakerError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise DefakerError(f"threads must be >= 1, got {threads}")
        if workers is not None and workers < 1:
            raise DefakerError(f"workers must be >= 1, got {workers}")
        cores = threads or os.cpu_count() or 1
        workers = min(workers or 1, cores)
        # one worker and no cap: leave ORT its own default thread count, as before workers existed
        intra = None if threads is None and workers == 1 else max(1, cores // workers)
        key = trusted_key if trusted_key is not None else trusted_key_from_env()
        signed = None
        if key is not None:
            root = resolve_package_dir(package)
            if student is not None:
                raise SignatureError(f"{root}: student={student} is not covered by the package's signature; "
                                     "with a trusted key only the package's own files load")
            signed = verify_signature(root, key)
            pkg = load_package(root)
            # bind what is used to what was verified: the manifest read now is the signed one
            # (its sha256 chains every model file and the golden data, which the load re-hashes)
            if pkg.manifest_sha256 != signed.digests.get("manifest.json"):
                raise SignatureError(f"{root}: manifest.json changed while the package was being loaded")
        else:
            pkg = load_package(package)
        if (not np.allclose(pkg.mean, tiling.MEAN, atol=1e-6) or not np.allclose(pkg.std, tiling.STD, atol=1e-6)):
            raise ArtifactError(f"{pkg.root}: input mean/std {pkg.mean}/{pkg.std} differ from the runtime's "
                                f"ImageNet normalization {tiling.MEAN}/{tiling.STD}")
        golden = load_golden(pkg)
        # DESIGN §6: every file is checked at load, not only the one about to run, so a damaged
        # package is reported even when the path in use is intact (Detector.package_problems)
        verified = {f.path: verify_file(pkg, f) for f in pkg.files}
        cands = cls._candidates(pkg, backend, precision, providers, fallback)
        reasons: list[str] = []
        for c in cands:
            try:
                be = cls._open(pkg, c, golden, providers, student=student, threads=intra,
                               batch_size=batch_size, trt=trt, cudart=cudart, verified=verified)
            except BackendUnavailable as e:
                reasons.append(f"{c.label}: {e.reason}")
                if fallback == "never":
                    raise ArtifactError(f"{pkg.root}: {reasons[-1]} (fallback='never')") from None
                log.warning("%s: %s; trying the next candidate", pkg.root, reasons[-1])
                continue
            det = cls(pkg, be, fallback=fallback, load_fallback="; ".join(reasons) or None,
                      batch_size=batch_size, mask=mask, mask_dtype=mask_dtype, max_pixels=max_pixels,
                      providers=providers, golden=golden, threads=intra, workers=workers,
                      decode_timeout=decode_timeout)
            det.package_problems = [f"{f.path}: {verified[f.path]}" for f in pkg.files if verified[f.path]]
            det.signed_by = signed.keyid if signed is not None else None
            if c.entry is not None and c.entry.forced:
                det.warning = f"{c.entry.label}: {c.entry.gate_summary()}; its scores are not validated"
                log.warning("%s: %s", pkg.root, det.warning)
            for p in det.package_problems:
                log.warning("%s: %s", pkg.root, p)
            return det
        raise ArtifactError(f"{pkg.root}: no backend could load: " + "; ".join(reasons or ["no candidates"]))

    @staticmethod
    def _candidates(pkg: Package, backend: str, precision: str, providers: Sequence[str] | None,
                    fallback: str) -> list[_Candidate]:
        from .backends.onnxruntime import gpu_available

        asked_gpu = providers is None or any(p != "CPUExecutionProvider" for p in providers)
        gpu = asked_gpu and (gpu_available() or _has("tensorrt"))
        out: list[_Candidate] = []

        def onnx(p: str, explicit: bool) -> None:
            e = pkg.onnx(p)
            if e is not None and e.forced and not explicit:
                log.debug("%s: %s %s; not chosen by precision='auto'", pkg.root, e.label, e.gate_summary())
            elif e is not None:
                out.append(_Candidate("onnxruntime", p, e))
            elif explicit:  # asked for by name: its absence is worth saying
                out.append(_Candidate("onnxruntime", p, FileEntry(path="<not in package>", precision=p)))

        def engines(explicit: bool) -> None:
            es = [e for e in pkg.engines() if (precision == "auto" and not e.forced) or e.precision == precision]
            out.extend(_Candidate("tensorrt", e.precision, e) for e in es)
            if explicit and not es:
                out.append(_Candidate("tensorrt", precision, FileEntry(path="<no engine in package>",
                                                                       precision=precision, format="tensorrt")))

        if backend == "torch":
            out.append(_Candidate("torch", "fp32", None))
        elif backend == "tensorrt":
            engines(explicit=True)
        elif backend == "onnxruntime":
            if precision == "auto":
                onnx("int8" if gpu else "int8-cpu", explicit=False)
            else:
                onnx(precision, explicit=True)
        else:  # auto
            if gpu and _has("tensorrt"):
                engines(explicit=False)
            if precision == "auto":
                onnx("int8" if gpu else "int8-cpu", explicit=False)
            else:
                onnx(precision, explicit=True)
        if fallback == "auto" or not out:
            if not any(c.kind == "onnxruntime" and c.precision == "fp32" for c in out):
                onnx("fp32", explicit=True)
        if fallback == "never":
            out = out[:1]
        return out

    @staticmethod
    def _open(pkg: Package, c: _Candidate, golden: Golden | None, providers: Sequence[str] | None, *,
              student: str | Path | None, threads: int | None, batch_size: int, trt: Any, cudart: Any,
              verified: dict[str, str | None] | None = None) -> Backend:
        if c.kind == "torch":
            from .backends.torch_student import TorchBackend

            sdir = Path(student) if student else pkg.root / "student"
            be: Backend = TorchBackend(sdir, pkg.tile)
        else:
            assert c.entry is not None
            if c.entry.path.startswith("<"):
                raise BackendUnavailable(c.entry.path.strip("<>"))
            why = verified[c.entry.path] if verified and c.entry.path in verified else verify_file(pkg, c.entry)
            if why:
                raise BackendUnavailable(why)
            if c.kind == "tensorrt":
                from .backends.tensorrt import TrtBackend

                be = TrtBackend(pkg.path_of(c.entry), c.entry, pkg.tile, input_name=pkg.input_name,
                                max_batch=batch_size, trt=trt, cudart=cudart, dct=pkg.dct)
            else:
                from .backends.onnxruntime import OrtBackend

                be = OrtBackend(pkg.path_of(c.entry), c.precision, pkg.tile, providers=providers,
                                input_name=pkg.input_name, threads=threads)
        if golden is not None:
            try:
                fake, mask = be.run_tiles(golden.input_u8, golden.qtable)
            except Exception as e:  # a backend that cannot run its own golden input is broken
                be.close()
                raise BackendUnavailable(f"golden self-test: {type(e).__name__}: {e}") from None
            ref_p = c.precision if c.precision in golden.outputs else "fp32"
            if c.kind == "tensorrt":
                atol = float(c.entry.raw.get("golden_atol") or ENGINE_ATOL)
            else:
                atol = pkg.golden_atol.get(c.precision, DEFAULT_ATOL.get(c.precision, 0.1))
            why = golden_mismatch(golden, ref_p, atol, fake, mask)
            if why:
                be.close()
                raise BackendUnavailable(why)
        return be

    def _full_precision(self) -> Backend | None:
        """The FP32 ONNX on ORT (CUDA or CPU EP), loaded on first need; None if unavailable."""
        if self.backend.precision == "fp32":
            return None  # already the full-precision path
        with self._fp_lock:
            if self._fp is None and self._fp_error is None:
                entry = self.package.onnx("fp32")
                if entry is None:
                    self._fp_error = "fp32: not in package"
                else:
                    provs = [p for p in (self._providers or ("CUDAExecutionProvider", "CPUExecutionProvider"))
                             if p != "TensorrtExecutionProvider"] or ["CPUExecutionProvider"]
                    try:
                        self._fp = self._open(self.package, _Candidate("onnxruntime", "fp32", entry), self._golden,
                                              provs, student=None, threads=self._threads, batch_size=self.batch_size,
                                              trt=None, cudart=None)
                    except BackendUnavailable as e:
                        self._fp_error = f"fp32: {e.reason}"
            return self._fp

    # ---------------------------------------------------------------- running
    def _job(self, src: ImageSource, name: str | None, max_pixels: int | None, mask: str,
             decode_timeout: float | None = None) -> _Job:
        t = time.perf_counter()
        label = name or (str(src) if isinstance(src, (str, os.PathLike)) else None)
        if label is None and isinstance(src, PILImage.Image):
            label = getattr(src, "filename", None) or "<PIL image>"
        try:
            # the table is in the header: Pillow parses it without decoding (a fraction of a ms); only
            # a package with the compression-history stream reads it
            img, q = pixels_of(src, label, max_pixels=max_pixels or self.max_pixels, qtable=bool(self.package.dct),
                               decode_timeout=decode_timeout if decode_timeout is not None else self.decode_timeout)
        except DefakerError as e:
            # the job may wait in the batch: keep the message, not the frames holding the input's bytes
            return _Job(name=label or "<input>", img=None, origins=[], logits=np.zeros(0, np.float32),
                        stitcher=None, decode_error=clean_error(e))
        h, w = img.shape[:2]
        origins = tiling.tile_origins(h, w, self.spec)
        st = MaskStitcher(h, w, self.spec.tile, self.spec.overlap) if mask != "none" else None
        return _Job(name=label, img=img, origins=origins, logits=np.full(len(origins), np.nan, np.float32),
                    stitcher=st, decode_ms=(time.perf_counter() - t) * 1e3, qtable=q,
                    source=str(src) if isinstance(src, (str, os.PathLike)) else None,
                    keep=self._rerun_margin if st is not None else None)

    def _stream(self, jobs: Iterable[_Job], backend: Backend) -> Iterator[_Job]:
        """Run every job's tiles through `backend` in batches that may span images; yield jobs in order
        as soon as all their tiles are back. Memory: one batch of tiles per worker plus the jobs in
        flight (at most one image with >= batch_size tiles).

        With W > 1 workers (a backend that allows concurrent runs: ORT on the CPU), up to W batches
        run at once, each on 1/W of the threads, while the next batch is cut, and an image's tiles
        are split into W batches of similar size (9 tiles: 5 + 4, not 8 + 1). Whether that beats
        one batch on all threads depends on the CPU: on the 2-core development VM it did not
        (hence the default of 1; scripts/runtime_workers.py measures it)."""
        T = self.spec.tile
        B = min(self.batch_size, backend.max_batch or self.batch_size)
        W = self.workers if backend.concurrent and self._pool is not None else 1
        fmt = backend.input_format
        bufs = [tiling.input_buffer(fmt, B, T) for _ in range(W)]
        # the compression-history inputs, batch buffers beside the image's (empty for other models)
        ebufs = [tiling.extra_buffers(B, T, backend.dct, fmt, backend.dct_layout) for _ in range(W)]
        # a model that computes the stream in its graph (tiling.PIXELS) needs only the table
        stream = backend.dct if fmt != tiling.PIXELS else None
        cur = 0
        refs: list[tuple[_Job, int]] = []
        pending: deque[tuple[Any, list[tuple[_Job, int]]]] = deque()
        inflight: deque[_Job] = deque()

        def run(x: np.ndarray, extra: dict[str, np.ndarray]) -> tuple[Any, Any, Any, str | None, float]:
            t0 = time.perf_counter()
            try:
                fake, mask = backend.run(x, extra or None)
                bad = ~np.isfinite(fake) | ~np.isfinite(mask.reshape(len(x), -1)).all(axis=1)
                return fake, mask, bad, None, (time.perf_counter() - t0) * 1e3
            except Exception as e:  # any backend failure re-runs these images on the fallback path
                return None, None, None, (f"{backend.precision}: {type(e).__name__}: "
                                          f"{str(e).splitlines()[0][:160] if str(e) else ''}"), 0.0

        def collect() -> None:
            res, batch = pending.popleft()
            fake, mask, bad, err, ms = res.result() if W > 1 else res
            n = len(batch)
            for k, (job, i) in enumerate(batch):
                if err is not None:
                    job.error = job.error or err
                elif job.error is None:
                    if bad[k]:
                        job.error = "nan/inf in output"
                    else:
                        job.logits[i] = fake[k]
                        if job.stitcher is not None:
                            y, x = job.origins[i]
                            job.stitcher.add(y, x, mask[k, 0])
                            if job.keep is not None:
                                job.keep_mask(i, float(fake[k]), mask[k, 0])
                job.done += 1
                job.infer_ms += ms / n

        def flush() -> None:
            nonlocal cur
            if not refs:
                return
            x = bufs[cur][:len(refs)]
            e = {k: v[:len(refs)] for k, v in ebufs[cur].items()}
            pending.append((self._pool.submit(run, x, e) if W > 1 else run(x, e), list(refs)))
            refs.clear()
            cur = (cur + 1) % W
            if len(pending) >= W:  # the next buffer is the oldest batch's: wait for it first
                collect()

        def drain() -> None:
            while pending:
                collect()

        for job in jobs:
            inflight.append(job)
            # a multi-tile image is split evenly over the workers; small images share batches of B
            cap = min(B, -(-job.n // W)) if W > 1 and job.n > W else B
            i = 0
            while i < job.n:
                take = min(cap - len(refs), job.n - i) if len(refs) < cap else 0
                if take == 0:
                    flush()
                    continue
                k = len(refs)
                tp = time.perf_counter()
                if stream and job.stream is None:
                    job.stream = self._image_stream(job.img, job.qtable, stream)
                self._prepare(job.img, job.origins[i:i + take], bufs[cur][k:k + take], fmt,
                              {n: v[k:k + take] for n, v in ebufs[cur].items()}, job.qtable, backend.dct,
                              job.stream)
                job.prep_ms += (time.perf_counter() - tp) * 1e3
                refs.extend((job, j) for j in range(i, i + take))
                i += take
                if len(refs) >= cap:
                    flush()
            if job.n >= B or (W > 1 and job.n > W):
                # a large image: finish it before the next one is decoded, so two big images are
                # never in memory together; small images keep sharing batches
                flush()
                drain()
            while inflight and inflight[0].done == inflight[0].n:
                yield inflight.popleft()
        flush()
        drain()
        while inflight:
            yield inflight.popleft()

    def _prepare(self, img: np.ndarray, origins: list[tuple[int, int]], out: np.ndarray, fmt: str,
                 extra: dict[str, np.ndarray] | None = None, qtable: np.ndarray | None = None,
                 dct: tuple[int, int] | None = None, stream: np.ndarray | None = None) -> None:
        """Cut `origins` from img into `out` as the backend's input (`fmt`: normalized float, or the
        INT8-CPU model's raw pixels), and the compression-history inputs into `extra` when the model
        takes them (sliced from the image's `stream` where the grid allows), in parallel when it pays."""
        T = self.spec.tile
        n = len(origins)
        tables = tile_tables(qtable, origins) if (dct and qtable is not None) else None

        def fill(a: int, b: int) -> None:
            tiles = tiling.cut_tiles(img, origins[a:b], T)
            tiling.prepare(tiles, fmt, out=out[a:b])
            if dct:
                tiling.fill_extra({k: v[a:b] for k, v in extra.items()}, tiles,
                                  None if tables is None else tables[a:b], dct, origins[a:b], stream)

        if self._prep is None or n < 2:
            fill(0, n)
            return
        parts = min(n, self._prep_n)
        bounds = [round(j * n / parts) for j in range(parts + 1)]
        futs = [self._prep.submit(fill, bounds[j], bounds[j + 1]) for j in range(parts)]
        for f in futs:
            f.result()

    def _image_stream(self, img: np.ndarray, qtable: np.ndarray | None, dct: tuple[int, int]) -> np.ndarray:
        """dct.image_stream of the whole image, its row bands split over the prep threads."""
        h = img.shape[0] // 8
        parts = min(self._prep_n, max(1, h // 16)) if self._prep is not None else 1
        if parts < 2:
            return image_stream(img, qtable, *dct)
        cuts = [round(j * h / parts) * 8 for j in range(parts + 1)]
        futs = [self._prep.submit(image_stream, img[a:b], qtable, *dct) for a, b in zip(cuts, cuts[1:])]
        return np.concatenate([f.result() for f in futs], axis=0)

    def _finish(self, job: _Job, mask: str, keep_pixels: bool = False) -> Verdict:
        t = time.perf_counter()
        th = self.package.thresholds
        be = self.backend
        reason = job.error
        soft = False
        prob = logit = float("nan")
        if reason is None:
            logit = tiling.aggregate_logits(job.logits)
            prob = float(sigmoid(np.float64(logit / th.temperature)))
            if th.band and be.precision != "fp32" and th.band[0] <= prob <= th.band[1]:
                reason, soft = f"band: {prob:.2f} in [{th.band[0]:g}, {th.band[1]:g}]", True
        uncertain = soft
        if reason and self.fallback_mode == "never":
            if not soft:
                raise InferenceError(f"{job.name}: {be.describe()}: {reason} (fallback='never')")
            reason = None
        fb_ms = 0.0
        rerun = 0
        if reason:
            fp = self._full_precision()
            if fp is None:
                if not soft:
                    why = self._fp_error or "it already ran at full precision"
                    raise InferenceError(f"{job.name}: {be.describe()}: {reason}; cannot fall back ({why})")
                reason = f"{reason}; not re-run ({self._fp_error})"
            else:
                t0 = time.perf_counter()
                job, be, rerun = self._rerun(job, fp, reason, partial=soft)
                logit = tiling.aggregate_logits(job.logits)
                prob = float(sigmoid(np.float64(logit / th.temperature)))
                fb_ms = (time.perf_counter() - t0) * 1e3
        h, w = job.img.shape[:2]
        src = quarter = None
        tm = time.perf_counter()
        if job.stitcher is not None:
            logits_q = job.stitcher.logits_quarter()
            quarter = sigmoid(logits_q).astype(np.float32)
            if mask == "full":
                src = (logits_q, self.mask_dtype)  # upsampled on first access of Verdict.mask
        mask_ms = (time.perf_counter() - tm) * 1e3
        timings = {"decode_ms": job.decode_ms, "prep_ms": job.prep_ms, "infer_ms": job.infer_ms,
                   "mask_ms": mask_ms, "fallback_ms": fb_ms}
        timings["total_ms"] = job.decode_ms + job.prep_ms + job.infer_ms + (time.perf_counter() - t) * 1e3
        fb = "; ".join(r for r in (self.load_fallback, reason) if r) or None
        pkg = self.package
        return Verdict(package_id=pkg.package_id, manifest_sha256=pkg.manifest_sha256,
                       warning=self.warning if be is self.backend else None,
                       fake_prob=prob, is_fake=bool(prob >= th.threshold), threshold=th.threshold, _mask_src=src,
                       pixel_threshold=th.pixel_threshold,
                       backend=be.name, precision=be.precision, fallback=fb, timings=timings, logit=logit,
                       provider=be.provider, image=job.name, size=(h, w), n_tiles=job.n, mask_quarter=quarter,
                       package_problems=list(self.package_problems), uncertain=uncertain, source=job.source,
                       tiles_rerun=rerun, pixels=job.img if keep_pixels else None)

    def _rerun(self, job: _Job, fp: Backend, reason: str, partial: bool) -> tuple[_Job, Backend, int]:
        """`job` answered again on the full-precision backend: (the answered job, fp, tiles re-run).

        An error re-runs every tile. A band re-run (`partial`) runs only the tiles within the margin
        of the best tile: the image logit is the maximum, and a tile further below cannot become the
        maximum at FP32 (the margin is twice the largest INT8-vs-FP32 tile gap seen in calibration).
        Their FP32 logits replace the INT8 ones, and their masks the INT8 masks, in place."""
        if partial and job.keep is not None:
            idx = np.flatnonzero(job.logits >= job.logits.max() - job.keep)
        elif partial and job.stitcher is None:  # no masks to swap: the tiles alone decide
            idx = np.flatnonzero(job.logits >= job.logits.max() - self.package.thresholds.margin())
        else:
            idx = np.arange(job.n)
        full = len(idx) == job.n
        masks = _TileMasks() if (job.stitcher is not None and not full) else None
        redo = _Job(name=job.name, img=job.img, origins=[job.origins[i] for i in idx], qtable=job.qtable,
                    source=job.source, stream=job.stream, logits=np.full(len(idx), np.nan, np.float32),
                    stitcher=masks if masks is not None else (
                        MaskStitcher(*job.img.shape[:2], self.spec.tile, self.spec.overlap)
                        if job.stitcher is not None else None))
        for _ in self._stream([redo], fp):
            pass
        if redo.error:
            raise InferenceError(f"{job.name}: {reason}; the full-precision path failed too: {redo.error}")
        if full:
            # the verdict's timings stay the first pass's (decode, prep, infer) plus fallback_ms
            redo.decode_ms, redo.prep_ms, redo.infer_ms = job.decode_ms, job.prep_ms, job.infer_ms
            return redo, fp, len(idx)
        job.logits[idx] = redo.logits
        if masks is not None:
            for i, (y, x) in zip(idx, redo.origins):
                job.stitcher.replace(y, x, job.kept[i], masks[(y, x)])
        job.kept.clear()
        return job, fp, len(idx)

    def check(self, image: ImageSource, *, name: str | None = None, mask: str | None = None,
              max_pixels: int | None = None, decode_timeout: float | None = None,
              keep_pixels: bool = False) -> Verdict:
        """One image (path, encoded bytes, an RGB array or a PIL image) -> Verdict. Raises ImageError
        if unreadable.
        decode_timeout overrides the detector's (seconds per 10 MP) for this image.
        keep_pixels: the Verdict keeps the decoded image (`Verdict.pixels`), e.g. to draw its overlay
        without decoding the file again (off by default: a 12 MP photo is 36 MB)."""
        mode = mask or self.mask_mode
        job = self._job(image, name, max_pixels, mode, decode_timeout)
        if job.decode_error:
            raise job.decode_error
        for j in self._stream([job], self.backend):
            return self._finish(j, mode, keep_pixels)
        raise AssertionError("unreachable")

    def check_many(self, images: Iterable[ImageSource], *, mask: str | None = None, errors: str = "raise",
                   max_pixels: int | None = None, keep_pixels: bool = False) -> Iterator[Verdict | DefakerError]:
        """Verdicts in input order, with tiles of consecutive images sharing batches.

        errors='raise' raises the first unreadable image's ImageError (or an InferenceError);
        errors='yield' yields that error object in its place and goes on.
        keep_pixels: as in check (each Verdict holds its image until the caller lets it go).
        """
        if errors not in ("raise", "yield"):
            raise DefakerError(f"errors must be 'raise' or 'yield', got {errors!r}")
        mode = mask or self.mask_mode
        jobs = (self._job(src, None, max_pixels, mode) for src in images)
        for job in self._stream(jobs, self.backend):
            if job.decode_error is not None:
                if errors == "raise":
                    raise job.decode_error
                yield job.decode_error
                continue
            try:
                v: Verdict | DefakerError = self._finish(job, mode, keep_pixels)
            except DefakerError as e:  # InferenceError: this image failed on every path
                if errors == "raise":
                    raise
                v = e
            finally:
                job.img = job.stream = None  # let the pixels go before the next image decodes
                job.kept.clear()
            yield v

    def info(self) -> dict[str, Any]:
        return {"package": str(self.package.root), "package_id": self.package.package_id,
                "manifest_sha256": self.package.manifest_sha256, "signed_by": self.signed_by,
                "warning": self.warning, "backend": self.backend.name, "precision": self.backend.precision,
                "provider": self.backend.provider, "input_format": self.backend.input_format,
                "fallback": self.load_fallback,
                "package_problems": self.package_problems, "tile": self.spec.tile,
                "overlap": self.spec.overlap, "batch_size": self.batch_size,
                "workers": self.workers if self.backend.concurrent else 1, "threads_per_run": self._threads}

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._prep is not None:
            self._prep.shutdown(wait=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.backend.close()
        if self._fp is not None:
            self._fp.close()
