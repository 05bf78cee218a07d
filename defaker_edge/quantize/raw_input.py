"""CPU INT8 on raw pixels: the normalization folded into the residual front end, which then
quantizes exactly, and the model's input becomes uint8 (runtime.tiling.RAW_S2D).

Why: with a normalized float input, the block student's full-resolution front end (3x3 residual
filters, then a clip) had to stay FP32, because U8 quantization of a normalized image has a
step of ~1.07 grey levels and rounds away the 0.5-3 grey-level traces the filters read. That
front end, its output's quantization and ORT's NCHW->NHWC reorder were two thirds of an INT8 tile's
time (2-core EPYC, batch 8, 2 threads: 3.5 + 1.5 + 1.6 of ~10 ms), so INT8 ran only ~1.3x FP32.
A uint8 pixel is already an integer: with the input's scale 1 and zero point 0, quantizing it
rounds nothing; the filters' taps are +-2^k multiples of one scale per output channel, which
7-bit weights hold exactly (front_weight_error checks it at quantize time); and the clip
becomes the output's saturation.

The rewrite, FP32 ONNX -> FP32 ONNX with the same function except on the pad ring:
1. fold: the front conv reads pixels p in [0, 255]: w' = w / (255 std_c), bias' = sum(w) (-mean_c / std_c);
2. pad: the runtime pads each tile by 1 px with the rounded mean colour (tiling.RAW_FILL), which
   stands in for the conv's zero padding of the normalized image (the exact mean colour), at
   most 0.47 grey levels off, on the ring only (default student: logits within 1e-3);
3. space-to-depth by 2: the input [N, 12, T/2+1, T/2+1] holds each 2x2 block's 4 pixels; the 3x3
   conv becomes a 2x2 conv with 48 outputs (its 12 channels at the block's 4 positions) and the
   8x8/8 stem a 4x4/4 conv over them. Why: ORT's QLinearConv has no fast kernel for 3 input
   channels at full resolution (per 512 tile, batch 8, 2 threads: grouped 39 ms, dense 10 ms),
   while 12 in and 48 out is one ordinary GEMM (3.0 ms).
`uint8_input` then takes the quantized graph's input QuantizeLinear away (the pixels are the
quantized values) and declares the input uint8 NHWC, with a Transpose that ORT's layout pass
cancels against its own: the runtime's tiles are NHWC already.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import DefakerError
from ..runtime.tiling import FORMAT_KEY, MEAN, RAW_S2D, STD

log = logging.getLogger(__name__)

INPUT = "image"


WEIGHT_ERROR_KEY = "defaker.front_weight_error"  # metadata: front_weight_error of the shipped file


class Unsupported(DefakerError):
    """The model has no front end this rewrite knows; the reason is the message."""


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set_attr(node, name: str, value) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _image_input(g):
    return next(i for i in g.input if i.name == INPUT)


def _front(g):
    """(front conv, clip, stem conv) or Unsupported with why."""
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names = [i.name for i in g.input]
    # the compression-history stream's inputs (dct, qtable) may sit beside the image: untouched here
    if not names or names[0] != INPUT or any(n not in (INPUT, "dct", "qtable") for n in names):
        raise Unsupported(f"expected the input {INPUT!r} first (and at most dct, qtable beside it), got {names}")
    readers = consumers.get(INPUT, [])
    if len(readers) != 1 or readers[0].op_type != "Conv":
        raise Unsupported("the image is not read by exactly one Conv (no residual front end)")
    conv = readers[0]
    a = _attrs(conv)
    if (list(a.get("kernel_shape", [])) != [3, 3] or list(a.get("strides", [1, 1])) != [1, 1]
            or list(a.get("pads", [0] * 4)) != [1, 1, 1, 1] or list(a.get("dilations", [1, 1])) != [1, 1]):
        raise Unsupported("the first conv is not 3x3, stride 1, padding 1")
    nxt = consumers.get(conv.output[0], [])
    if len(nxt) != 1 or nxt[0].op_type != "Clip":
        raise Unsupported("the first conv is not followed by a Clip alone")
    clip = nxt[0]
    nxt = consumers.get(clip.output[0], [])
    if len(nxt) != 1 or nxt[0].op_type != "Conv":
        raise Unsupported("the clip does not feed one Conv (the stem)")
    stem = nxt[0]
    s = _attrs(stem)
    k, st = list(s.get("kernel_shape", [])), list(s.get("strides", [1, 1]))
    if (len(k) != 2 or k[0] != k[1] or k != st or k[0] % 2 or list(s.get("pads", [0] * 4)) != [0] * 4
            or s.get("group", 1) != 1 or list(s.get("dilations", [1, 1])) != [1, 1]):
        raise Unsupported("the stem is not an even k x k conv at stride k without padding")
    return conv, clip, stem


def unsupported(onnx_path: str | os.PathLike) -> str | None:
    """Why `onnx_path` cannot take raw pixels, or None when it can: a trial rewrite, so that every
    reason fold_raw_input can raise is found before the quantize stage commits to raw pixels."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="defaker-raw-") as tmp:
        try:
            fold_raw_input(onnx_path, Path(tmp) / "trial.onnx")
        except Unsupported as e:
            return str(e)
    return None


def _with_constant_weights(path: str | os.PathLike):
    """The model, with the front conv's and the stem's weights as initializers. The exporter can
    leave the stem's zero-sum projection as ops on its weight; ORT's basic graph optimizations
    (constant folding, Conv+BN) turn them into constants, as quant_pre_process does anyway."""
    import tempfile

    import onnx

    m = onnx.load(str(path))
    conv, _, stem = _front(m.graph)
    names = {i.name for i in m.graph.initializer}
    if conv.input[1] in names and stem.input[1] in names:
        return m
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="defaker-fold-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def fold_raw_input(fp32_onnx: str | os.PathLike, out: str | os.PathLike,
                   mean=MEAN, std=STD) -> Path:
    """Write OUT: the FP32 model taking float32 raw pixels, padded and space-to-depth, NCHW
    [N, 12, T/2+1, T/2+1] (RAW_S2D's channels, channels first). Raises Unsupported."""
    import onnx
    from onnx import numpy_helper

    m = _with_constant_weights(fp32_onnx)
    g = m.graph
    conv, _, stem = _front(g)
    init = {i.name: i for i in g.initializer}

    def arr(name: str) -> np.ndarray:
        if name not in init:
            raise Unsupported(f"{name} is not a constant")
        return numpy_helper.to_array(init[name]).astype(np.float64)

    def put(name: str, a: np.ndarray) -> None:
        init[name].CopyFrom(numpy_helper.from_array(a.astype(np.float32), name))

    w = arr(conv.input[1])  # [O, 3 / group, 3, 3]
    o_n, groups = w.shape[0], int(_attrs(conv).get("group", 1))
    if w.shape[1] * groups != 3 or o_n % groups:
        raise Unsupported(f"the first conv's weight {list(w.shape)} (group {groups}) does not read 3 colours")
    dense = np.zeros((o_n, 3, 3, 3))
    per = o_n // groups
    for o in range(o_n):
        g0 = (o // per) * w.shape[1]
        dense[o, g0:g0 + w.shape[1]] = w[o]
    scale = 1.0 / (255.0 * np.asarray(std, np.float64))
    shift = -np.asarray(mean, np.float64) / np.asarray(std, np.float64)
    folded = dense * scale[None, :, None, None]
    bias = (dense.sum((2, 3)) * shift[None, :]).sum(1)
    if len(conv.input) > 2 and conv.input[2]:
        bias = bias + arr(conv.input[2])
    # 2x2 space-to-depth: input channel (dy*2+dx)*3+c is padded pixel (2i+dy, 2j+dx); output
    # channel o*4 + ey*2 + ex is full-resolution output (2i+ey, 2j+ex), which reads padded pixels
    # (2i+ey+ky, 2j+ex+kx) = block (i + (ey+ky)//2, ...) at offset ((ey+ky)%2, ...)
    w2 = np.zeros((o_n * 4, 12, 2, 2))
    for ey in range(2):
        for ex in range(2):
            for ky in range(3):
                for kx in range(3):
                    bi, dy = divmod(ey + ky, 2)
                    bj, dx = divmod(ex + kx, 2)
                    for c in range(3):
                        w2[np.arange(o_n) * 4 + ey * 2 + ex, (dy * 2 + dx) * 3 + c, bi, bj] = folded[:, c, ky, kx]
    put(conv.input[1], w2)
    bname = conv.input[1] + "_raw_bias"
    g.initializer.append(numpy_helper.from_array(np.repeat(bias, 4).astype(np.float32), bname))
    while len(conv.input) > 2:
        conv.input.pop()
    conv.input.append(bname)
    _set_attr(conv, "group", 1)
    _set_attr(conv, "kernel_shape", [2, 2])
    _set_attr(conv, "pads", [0, 0, 0, 0])
    # the stem, k x k at stride k over [O, 2a+ey, 2b+ex] -> k/2 x k/2 at stride k/2 over channel o*4+ey*2+ex
    s = arr(stem.input[1])
    k = s.shape[-1]
    if s.shape[1] != o_n:
        raise Unsupported(f"the stem reads {s.shape[1]} channels, the front conv writes {o_n}")
    h = k // 2
    put(stem.input[1], s.reshape(s.shape[0], o_n, h, 2, h, 2).transpose(0, 1, 3, 5, 2, 4).reshape(s.shape[0], o_n * 4, h, h))
    _set_attr(stem, "kernel_shape", [h, h])
    _set_attr(stem, "strides", [h, h])
    dims = _image_input(g).type.tensor_type.shape.dim
    tile = int(dims[-1].dim_value)
    if tile <= 0 or tile % 2:
        raise Unsupported("the input's tile size is not static and even")
    dims[1].dim_value, dims[2].dim_value, dims[3].dim_value = 12, tile // 2 + 1, tile // 2 + 1
    for vi in list(g.value_info):  # shapes inferred for the old input are stale
        g.value_info.remove(vi)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return Path(out)


def uint8_input(qdq_onnx: str | os.PathLike, out: str | os.PathLike, meta: dict[str, str] | None = None) -> Path:
    """Make a quantized raw-input model (fold_raw_input, then quantize_static with the input's
    scale 1, zero point 0) take uint8 NHWC RAW_S2D directly, and mark its format (plus `meta`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(qdq_onnx))
    g = m.graph
    init = {i.name: i for i in g.initializer}
    readers = [n for n in g.node if INPUT in n.input]
    nchw = INPUT + "_nchw"
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
        q = readers[0]
        sc = numpy_helper.to_array(init[q.input[1]]) if q.input[1] in init else None
        zp = numpy_helper.to_array(init[q.input[2]]) if len(q.input) > 2 and q.input[2] in init else None
        if sc is None or zp is None or float(sc) != 1.0 or int(zp) != 0 or zp.dtype != np.uint8:
            raise ValueError(f"{qdq_onnx}: the input is quantized with scale {sc}, zero point {zp}; "
                             "raw pixels need scale 1 and uint8 zero point 0")
        g.node.remove(q)
        for n in g.node:
            for i, x in enumerate(n.input):
                if x == q.output[0]:
                    n.input[i] = nchw
        first = [helper.make_node("Transpose", [INPUT], [nchw], perm=[0, 3, 1, 2], name="raw_input/nhwc")]
    else:
        # the front end was kept in FP32 (by --exclude): an FP32 conv reads the pixels, exactly
        for n in readers:
            for i, x in enumerate(n.input):
                if x == INPUT:
                    n.input[i] = nchw + "_f32"
        first = [helper.make_node("Transpose", [INPUT], [nchw], perm=[0, 3, 1, 2], name="raw_input/nhwc"),
                 helper.make_node("Cast", [nchw], [nchw + "_f32"], to=TensorProto.FLOAT, name="raw_input/cast")]
    for n in reversed(first):
        g.node.insert(0, n)
    t = _image_input(g).type.tensor_type
    t.elem_type = TensorProto.UINT8
    d = t.shape.dim
    c, hh = d[1].dim_value, d[2].dim_value
    d[1].dim_value, d[2].dim_value, d[3].dim_value = hh, hh, c
    for vi in list(g.value_info):
        g.value_info.remove(vi)
    from ..export.onnx_export import replace_metadata

    replace_metadata(m, {FORMAT_KEY: RAW_S2D, **(meta or {})})
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return Path(out)


def front_weight_error(fp32_raw: str | os.PathLike, qdq_onnx: str | os.PathLike) -> float:
    """Largest |dequantized - FP32| of the front conv's weights, relative to their largest |FP32|.

    0 for the residual filters at 7 bits: each output channel's taps are +-2^k multiples of one
    scale. A learned or odd filter would be rounded, and the quantize stage says so."""
    import onnx
    from onnx import numpy_helper

    ref = onnx.load(str(fp32_raw))
    conv = next(n for n in ref.graph.node if INPUT in n.input)  # the folded front conv
    w = numpy_helper.to_array(next(i for i in ref.graph.initializer if i.name == conv.input[1])).astype(np.float64)
    m = onnx.load(str(qdq_onnx))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    q = next((n for n in m.graph.node if n.name == conv.name), None)
    if q is None:
        raise DefakerError(f"{qdq_onnx}: no node {conv.name!r}: cannot check the front conv's weights")
    if q.input[1] not in prod or prod[q.input[1]].op_type != "DequantizeLinear":
        return 0.0  # the front conv stayed FP32 (--exclude): its weights are the FP32 ones
    dq = prod[q.input[1]]
    s = init[dq.input[1]].astype(np.float64).reshape(-1, 1, 1, 1)
    zp = init[dq.input[2]].astype(np.float64).reshape(-1, 1, 1, 1) if len(dq.input) > 2 else 0.0
    got = (init[dq.input[0]].astype(np.float64) - zp) * s
    return float(np.abs(got - w).max() / max(np.abs(w).max(), 1e-30))
