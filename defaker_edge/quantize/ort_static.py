"""INT8 for CPUs: ONNX Runtime static quantization, and the speed check against FP32.

QDQ format, per-channel S8 weights and U8 activations: on AVX2 CPUs without VNNI this is the
combination that beats FP32 (S8/S8 and dynamic quantization measured slower, DESIGN §7). Ranges
come from a CalibrationDataReader over the calibration tiles (MinMax).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _reader(calib: np.ndarray, input_name: str, batch: int, convert=None, extra: dict | None = None):
    """Batches of `calib` (through `convert`, one batch at a time: the raw path's float copy of the
    tiles would be 4x the uint8 set), with the model's other inputs (`extra`, aligned with calib)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(0, len(calib), batch))

        def get_next(self):
            a = next(self._it, None)
            if a is None:
                return None
            x = calib[a:a + batch]
            return {input_name: convert(x) if convert else x, **{k: v[a:a + batch] for k, v in (extra or {}).items()}}

    return _Reader()


def _raw_batch(tiles: np.ndarray) -> np.ndarray:
    """uint8 tiles -> the folded FP32 model's input: RAW_S2D's pixels as float, channels first."""
    from ..runtime.tiling import space_to_depth

    return np.ascontiguousarray(space_to_depth(tiles).transpose(0, 3, 1, 2), dtype=np.float32)


def quantize_ort_static(fp32_onnx: str | Path, out: str | Path, calib: np.ndarray,
                        exclude_nodes: list[str] | None = None, batch: int = 8, raw_input: bool = False,
                        feeds: dict[str, np.ndarray] | None = None) -> Path:
    """Write OUT: S8 per-channel weights (7-bit range), U8 activations, QDQ, calibrated on `calib`.

    `calib`: normalized float32 [N,3,T,T]; with `raw_input`, uint8 tiles [N,T,T,3], and OUT takes
    uint8 pixels (runtime.tiling.RAW_S2D; quantize.raw_input says why and how). `feeds`: the
    model's other inputs for the same tiles (the compression-history stream's dct and qtable)."""
    import sys

    if any(m.startswith("modelopt.onnx") for m in sys.modules):
        # ModelOpt's ONNX quantizer patches onnxruntime.quantization in place (ort_patching), after
        # which quantize_static loses the ranges of graph inputs. Run it in a fresh process then.
        import multiprocessing as mp

        with tempfile.TemporaryDirectory(prefix="defaker-ortq-") as tmp:
            np.save(Path(tmp) / "calib.npy", calib)
            np.savez(Path(tmp) / "extra.npz", **(feeds or {}))
            proc = mp.get_context("spawn").Process(
                target=_quantize_from_file,
                args=(str(fp32_onnx), str(out), str(Path(tmp) / "calib.npy"), list(exclude_nodes or []), batch,
                      raw_input, str(Path(tmp) / "extra.npz")))
            proc.start()
            proc.join()
            if proc.exitcode != 0 or not Path(out).is_file():
                from ..errors import DefakerError

                raise DefakerError(f"onnxruntime static quantization failed (exit code {proc.exitcode})")
        return Path(out)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="defaker-ortq-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        extra: dict = {}
        if raw_input:
            from .raw_input import INPUT, fold_raw_input

            fp32_onnx = fold_raw_input(fp32_onnx, Path(tmp) / "raw.onnx")
            # scale 1, zero point 0: the U8 input is the pixel itself, nothing rounded
            extra["TensorQuantOverrides"] = {INPUT: [{"scale": np.array(1.0, np.float32),
                                                      "zero_point": np.array(0, np.uint8)}]}
        # ORT's recommended pre-pass: shape inference + graph optimization so Conv+BN etc. fold
        # before Q/DQ placement (otherwise BN stays a separate FP32 op between quantized convs).
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        from .onehot import overrides, uint8_onehot

        # the DCT stream's one-hot is 0/1: uint8 at scale 1 exactly (quantize.onehot)
        extra.setdefault("TensorQuantOverrides", {}).update(overrides(pre))
        qout = Path(tmp) / "q.onnx" if raw_input else out
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # ORT logs one INFO line per copied bias on the root logger
        try:
            quantize_static(str(pre), str(qout), _reader(calib, "image", batch, _raw_batch if raw_input else None,
                                                         feeds),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            # 7-bit weights: x86 CPUs without VNNI (AVX2, most AVX-512) run U8S8
                            # through vpmaddubsw, whose int16 pair sums saturate when activations
                            # near 255 meet weights near +-127. The block student's residual
                            # channels sit at the ends of their range wherever the clip saturates,
                            # and the stem's residual weights are its largest: at 8 bits its mask
                            # logits moved 16% more (mean abs. vs FP32) on such a CPU (2-core EPYC, AVX2). ORT's
                            # documented fix; ARM and VNNI kernels lose one bit of weight precision
                            nodes_to_exclude=list(exclude_nodes or []), reduce_range=True,
                            calibration_providers=["CPUExecutionProvider"], extra_options=extra)
        finally:
            root.setLevel(level)
        if raw_input:
            from .raw_input import WEIGHT_ERROR_KEY, front_weight_error, uint8_input

            err = front_weight_error(fp32_onnx, qout)
            if err > 1e-6:
                log.warning("the front conv's weights are rounded by INT8 (relative error %.2g): its filters "
                            "are not the fixed residual taps", err)
            uint8_input(qout, out, {WEIGHT_ERROR_KEY: repr(err)})
        if extra["TensorQuantOverrides"]:
            uint8_onehot(out)
    return out


def _quantize_from_file(fp32_onnx: str, out: str, calib_npy: str, exclude_nodes: list[str], batch: int,
                        raw_input: bool, extra_npz: str) -> None:
    with np.load(extra_npz) as z:
        extra = {k: z[k] for k in z.files}
    quantize_ort_static(fp32_onnx, out, np.load(calib_npy), exclude_nodes, batch, raw_input, extra or None)


def speed_ratio(fp32_onnx: str | Path, int8_onnx: str | Path, tiles: np.ndarray, *, repeats: int = 5,
                threads: int | None = 1, tables: np.ndarray | None = None) -> dict:
    """Time FP32 and INT8 ORT CPU sessions on the same uint8 tiles [N,T,T,3], batch 1, interleaved
    in one run, each fed its own input format (runtime.tiling.prepare; not timed).

    Interleaving (fp32, int8, fp32, ...) means a noisy neighbour on a shared CPU slows both
    alike; the ratio uses per-tile medians. One thread by default: on a shared CPU a second thread
    waits on stolen cores and the ratio becomes noise. Returns ms per tile and fp32_ms / int8_ms.
    """
    import onnxruntime as ort

    from ..runtime.backends.onnxruntime import session_options

    def session(p):
        # the runtime's options, no spin-waiting included: with two sessions interleaved, the
        # idle one's spinning pool would take the cores the timed one needs
        return ort.InferenceSession(str(p), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])

    from ..runtime.backends.onnxruntime import session_feeds

    t32, t8 = [], []
    tb = [None] * len(tiles) if tables is None else [t[None] for t in tables]
    runs = [(s, [session_feeds(s, t[None], q) for t, q in zip(tiles, tb)], acc)
            for s, acc in ((session(fp32_onnx), t32), (session(int8_onnx), t8))]
    for s, xs, _ in runs:  # warm-up: first runs allocate and pick kernels
        for xi in xs[:2]:
            s.run(None, xi)
    for _ in range(repeats):
        for i in range(len(tiles)):
            for s, xs, acc in runs:
                t0 = time.perf_counter()
                s.run(None, xs[i])
                acc.append((time.perf_counter() - t0) * 1e3)
    m32, m8 = statistics.median(t32), statistics.median(t8)
    return {"fp32_ms": m32, "int8_ms": m8, "ratio": m32 / m8, "tiles": len(tiles), "repeats": repeats,
            "tile": int(tiles.shape[1]), "batch": 1, "threads": threads, "provider": "CPUExecutionProvider"}


def image_readers(onnx_path: str | Path) -> list[str]:
    """Nodes that read the model's input image directly: the stem convs (SRM / RGB / JPEG-block, or
    the residual front end's conv) and anything else on the raw image (a Concat beside them).

    Why they stay FP32 on the CPU path with a normalized float input (--float-input, or a model
    without the residual front end; on raw pixels, quantize.raw_input, the front end is INT8 exactly):
    - precision: U8 quantisation of the normalised image has a step of (range / 255), about 1.07
      grey levels here, so it rounds away the 0.5-3 grey-level noise residuals these filters exist
      to read; every later activation is already a learned feature and quantises well. Every
      reader must be excluded, not only the convs: ORT puts one Q/DQ pair on a tensor that any
      quantized node consumes, and an FP32 conv then reads the rounded image through it (this
      cost the residual-front student 0.034 pixel F1 until the Concat beside it was excluded too);
    - speed, for the `inverted` arch: ORT's QLinearConv has no fast kernel for a 3-channel input at
      full resolution (measured on a 2-core Zen 3, 1 thread: the grouped 5x5 SRM conv took 119 ms
      in INT8 vs 29 ms in FP32), while the FP32 Conv runs a direct NCHWc kernel. The `block` arch's
      8x8 stride-8 stem is a small GEMM either way.
    """
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = {i.name for i in g.input} & {"image"}  # the pixels, not the DCT stream's inputs
    return [n.name for n in g.node if any(i in inputs for i in n.input)]


_PASS_THROUGH = {"Squeeze", "Unsqueeze", "Reshape", "Flatten", "Transpose", "Resize", "Identity"}


def output_nodes(onnx_path: str | Path) -> list[str]:
    """The nodes that make the model's outputs: each output's producer and, through shape-only ops
    (Squeeze, Reshape, Resize, ...), the node that computes it (the logit's Gemm, the mask head's Conv).

    Why they stay FP32: ORT puts a U8 Q/DQ pair on the output of every quantized node, so with the
    Gemm quantized the image logit comes out on a grid of (range / 255), 0.063 logits on the
    default student, and the mask logits on one of 0.136: pixels and images that close to their
    threshold can flip. The logits are the answer; the two small layers that make them cost nothing
    in FP32.
    """
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    producers = {o: n for n in g.node for o in n.output}
    names: list[str] = []
    todo = [producers[o.name] for o in g.output if o.name in producers]
    while todo:
        n = todo.pop()
        if n.name in names:
            continue
        names.append(n.name)
        if n.op_type in _PASS_THROUGH and n.input and n.input[0] in producers:
            todo.append(producers[n.input[0]])
    return names
