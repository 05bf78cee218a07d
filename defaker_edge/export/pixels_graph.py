"""One graph from pixels and table: the FP32 model with its input preparation inside (issue 23).

A package's FP32 file takes three inputs the caller computes: the normalized image, the DCT
stream and the table. `pixels_graph` prepends the preparation to the graph so it runs from what
a decoder gives, uint8 RGB tiles [N, T, T, 3] (tiling.PIXELS) and the file's luma table [N, 64]:

- the image branch: Cast, NHWC -> NCHW, (x * 1/255 - mean) / std, the same float32 operations as
  tiling.normalize (bit-identical);
- the stream (runtime.dct): luma as runtime.dct.luma computes it ((r*wr + g*wg) + b*wb - 128 in
  float32), then the 8x8 DCT of the F frequencies as one stride-8 convolution with the DCT basis
  images; Gather the table's steps of those F frequencies (0 -> 1), Div, Round (half to even,
  like numpy's rint), Abs, Min.

Luma and DCT are both linear and every AC basis image sums to zero, so the two could fold into one
conv over RGB with no level shift (`fold_luma=True`). Measured on 42 real JPEG tiles of the
held-out set, that tips 2,672 of 4.1 M coefficients (0.065%) to the other side of a rounding tie
against the numpy path, whose luma is rounded to float32 per pixel; luma first leaves 24 (the DCT's
float32 sums in another order), so luma first is the default. `pixels_agreement` counts them.
Meant for GPUs and TensorRT (no numpy per tile); on a CPU the numpy stream, computed once per image
and sliced, measured faster (bench/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..runtime.dct import _basis, frequencies
from ..runtime.tiling import DCT_LAYOUT_KEY, DCT_NHWC, FORMAT_KEY, MEAN, PIXELS, STD, extra_inputs, model_layout
from .onnx_export import replace_metadata
from .stream_layout import ADAPTER_OUT, PREFIX

# BT.601 luma weights, as runtime.dct.luma uses them
LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)
PIXELS_KEY = "defaker.stream_in_graph"  # metadata: "1" on a file that computes its DCT stream itself
PIXELS_FILE = "model_fp32_pixels.onnx"  # its name in a package (`defaker export --pixels-graph`)
PIXELS_ROLE = "pixels"  # its manifest role: the runtime's CPU path never picks it (the numpy stream is faster)


def stream_kernels(n_freq: int) -> np.ndarray:
    """float32 [F, 3, 8, 8]: kernel f maps an RGB block to its AC coefficient f of the luma's DCT."""
    basis = _basis(n_freq).T.reshape(n_freq, 8, 8).astype(np.float64)  # [F, 8, 8], row-major blocks
    return (LUMA.astype(np.float64)[None, :, None, None] * basis[:, None]).astype(np.float32)


def pixels_graph(model, dct: tuple[int, int], mean=MEAN, std=STD, fold_luma: bool = False):
    """An onnx.ModelProto taking image (uint8 [N, T, T, 3]) and qtable, from one taking the
    normalized image, dct and qtable (a package's FP32 file). The inputs keep their names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_freq, clip = dct
    g = model.graph
    names = [i.name for i in g.input]
    if names != ["image", "dct", "qtable"]:
        raise ValueError(f"expected the inputs image, dct, qtable; found {names}")
    dims = g.input[0].type.tensor_type.shape.dim
    tile = dims[-1].dim_value
    batch = dims[0].dim_param or dims[0].dim_value or "batch"
    # the original inputs become internal tensors computed by the new nodes
    rename = {"image": "_normalized", "dct": "_stream"}
    if model_layout(model) == DCT_NHWC:
        # a package file that takes the stream uint8 channels-last (export.stream_layout): its
        # adapter turns it back into the float32 NCHW tensor computed here, so the adapter goes
        adapter = [n for n in g.node if n.name in (PREFIX + "Cast", PREFIX + "Transpose")]
        if len(adapter) != 2:
            raise ValueError("the file takes a uint8 channels-last stream without the float adapter this graph "
                             "replaces (build the pixels graph from the FP32 file)")
        for n in adapter:
            g.node.remove(n)
        rename[ADAPTER_OUT] = "_stream"
    for node in g.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
    del g.input[:2]
    consts = {
        "_inv255": np.asarray(1.0 / 255.0, np.float32),
        "_mean": np.asarray(mean, np.float32).reshape(1, 3, 1, 1),
        "_std": np.asarray(std, np.float32).reshape(1, 3, 1, 1),
        "_freqs": frequencies(n_freq).astype(np.int64),
        "_zero": np.asarray(0.0, np.float32),
        "_one": np.asarray(1.0, np.float32),
        "_clip": np.asarray(float(clip), np.float32),
        "_steps_shape": np.asarray([-1, n_freq, 1, 1], np.int64),
    }
    if fold_luma:
        consts["_kernels"] = stream_kernels(n_freq)
    else:
        consts.update({"_wr": LUMA[0], "_wg": LUMA[1], "_wb": LUMA[2], "_128": np.asarray(128.0, np.float32),
                       "_basis": _basis(n_freq).T.reshape(n_freq, 1, 8, 8).copy()})
    init = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    nodes = [
        helper.make_node("Cast", ["image"], ["_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["_f"], ["_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["_nchw", "_inv255"], ["_scaled"]),
        helper.make_node("Sub", ["_scaled", "_mean"], ["_centred"]),
        helper.make_node("Div", ["_centred", "_std"], ["_normalized"]),
        *(
            # luma x block DCT as one conv over the raw pixel values (the -128 shift sums to zero)
            [helper.make_node("Conv", ["_nchw", "_kernels"], ["_coef"], kernel_shape=[8, 8], strides=[8, 8])]
            if fold_luma else
            # luma first, as runtime.dct.luma computes it ((r*wr + g*wg) + b*wb - 128, float32), then the DCT
            [helper.make_node("Split", ["_nchw"], ["_r", "_g", "_b"], axis=1),
             helper.make_node("Mul", ["_r", "_wr"], ["_yr"]), helper.make_node("Mul", ["_g", "_wg"], ["_yg"]),
             helper.make_node("Mul", ["_b", "_wb"], ["_yb"]), helper.make_node("Add", ["_yr", "_yg"], ["_yrg"]),
             helper.make_node("Add", ["_yrg", "_yb"], ["_y"]), helper.make_node("Sub", ["_y", "_128"], ["_luma"]),
             helper.make_node("Conv", ["_luma", "_basis"], ["_coef"], kernel_shape=[8, 8], strides=[8, 8])]
        ),
        helper.make_node("Gather", ["qtable", "_freqs"], ["_q"], axis=1),
        helper.make_node("Equal", ["_q", "_zero"], ["_none"]),
        helper.make_node("Where", ["_none", "_one", "_q"], ["_steps"]),
        helper.make_node("Reshape", ["_steps", "_steps_shape"], ["_steps4"]),
        helper.make_node("Div", ["_coef", "_steps4"], ["_units"]),
        helper.make_node("Round", ["_units"], ["_rounded"]),
        helper.make_node("Abs", ["_rounded"], ["_abs"]),
        helper.make_node("Min", ["_abs", "_clip"], ["_stream"]),
    ]
    g.input.insert(0, helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, tile, tile, 3]))
    new_nodes = nodes + list(g.node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(init)
    replace_metadata(model, {FORMAT_KEY: PIXELS, PIXELS_KEY: "1"}, drop=(DCT_LAYOUT_KEY,))  # it takes no stream
    onnx.checker.check_model(model)
    return model


def write_pixels_model(src: str | os.PathLike, dst: str | os.PathLike, dct: tuple[int, int]) -> Path:
    """pixels_graph of the ONNX file `src`, written to `dst`."""
    import onnx

    m = pixels_graph(onnx.load(str(src)), dct)
    onnx.save(m, str(dst))
    return Path(dst)


def pixels_agreement(pixels: str | os.PathLike, fp32: str | os.PathLike, tiles: np.ndarray,
                     tables: np.ndarray | None) -> dict:
    """The pixels graph against the FP32 file fed by the numpy path, on uint8 tiles [N, T, T, 3] and
    their tables: how many stream coefficients differ (float32 sums in another order tip a value
    within rounding of a .5 tie the other way; each such differs by 1) and how far the outputs moved."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ..runtime.backends.onnxruntime import session_dct
    from .golden import OUTPUT_NAMES, ort_session, run_tiles

    m = onnx.load(str(pixels))
    m.graph.output.append(helper.make_tensor_value_info("_stream", TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref_sess = ort_session(fp32)
    n = len(tiles)
    q = np.zeros((n, 64), np.float32) if tables is None else np.asarray(tables, np.float32).reshape(n, 64)
    ref = dict(zip(OUTPUT_NAMES, run_tiles(ref_sess, tiles, q)))
    got = sess.run([*OUTPUT_NAMES, "_stream"], {"image": np.ascontiguousarray(tiles, np.uint8), "qtable": q})
    want = extra_inputs(tiles, q, session_dct(ref_sess))["dct"]
    return {"tiles": n, "coefficients": int(want.size), "stream_mismatches": int((got[2] != want).sum()),
            "max_abs": {k: float(np.abs(g - ref[k]).max()) for k, g in zip(OUTPUT_NAMES, got)}}
