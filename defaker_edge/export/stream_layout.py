"""The compression stream's input as uint8 channels-last: a graph rewrite of a package's ONNX files.

A student exported from PyTorch takes its DCT stream as float32 [N, F, T/8, T/8]. Its values are
integers 0..clip, and the runtime computes them per 8x8 block with the F frequencies innermost, so
packages take them as they are made: uint8 [N, T/8, T/8, F] (tiling.DCT_NHWC). A quarter of the
bytes, nothing to convert or transpose per tile in the runtime, and for a C, Java or Swift caller the
natural output of a per-block DCT loop. The graph turns it back into the layout its one-hot reads:

- the CPU INT8 file (`uint8_compare`): Transpose the uint8 stream to NCHW, and compare it with the
  bins as uint8 (the one-hot was already made as uint8, quantize.onehot). No float on the way.
- the other files (FP32, and the GPU INT8/FP8 Q/DQ files): Cast to float32, then Transpose: the
  graph reads exactly the tensor it read before (TensorRT parses a uint8 input followed by a Cast).

Either way the arithmetic is unchanged, so outputs are bit-identical (rewrite_file checks it).

Measured on the shipped INT8-CPU file, 4 tiles of 576 (a 1024² check), 2 threads, 2-core Zen 4,
300 interleaved runs, three times: 14.37/13.78/13.10 ms before, 14.14/13.56/12.94 with this form.
Tried and dropped: a one-hot made channels-last (Equal([N, h, w, 1, F], [clip+1, 1]), the conv's
weight columns permuted to match), which spares ORT its transpose of the 264-channel one-hot to
NHWC: 14.90/14.37/13.51 ms in the same runs (the broadcast Equal took 1.5 ms against 0.45 + 0.7
for Equal and transpose), though in two earlier runs, while the machine ran ~35% slower, it was
the fastest by 1.4-2.1 ms.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DefakerError
from ..runtime.tiling import DCT_LAYOUT_KEY, DCT_NHWC, model_layout
from .onnx_export import replace_metadata

INPUT = "dct"
PREFIX = "/dct/nhwc/"  # the rewrite's node and tensor names
ADAPTER_OUT = PREFIX + "nchw"  # the NCHW stream the rest of the graph reads (uint8 or float32)


class Unsupported(DefakerError):
    """The graph's stream is not the one-hot this rewrite knows; the message says why."""


def _const_node(g, name: str):
    """(initializer or Constant node holding `name`, its array), or (None, None)."""
    from onnx import numpy_helper

    for i in g.initializer:
        if i.name == name:
            return i, numpy_helper.to_array(i)
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return n, numpy_helper.to_array(n.attribute[0].t)
    return None, None


def _uint8_bins(g, readers: list, clip: int) -> None:
    """The one-hot's Equal (dct -> Unsqueeze -> Equal) compares against uint8 bins 0..clip."""
    from onnx import numpy_helper

    # the values feed only the one-hot; a Shape (the one-hot's reshape arithmetic) reads no values
    unsq = [n for n in readers if n.op_type != "Shape"]
    if len(unsq) != 1 or unsq[0].op_type != "Unsqueeze":
        raise Unsupported(f"expected {INPUT!r} to feed one Unsqueeze (the one-hot), found "
                          f"{[n.op_type for n in readers]}")
    eq = [n for n in g.node if unsq[0].output[0] in n.input]
    if len(eq) != 1 or eq[0].op_type != "Equal":
        raise Unsupported("the stream's Unsqueeze does not feed one Equal")
    holder, bins = _const_node(g, eq[0].input[1])
    if holder is None or bins.size != clip + 1 or not np.array_equal(bins.reshape(-1), np.arange(clip + 1)):
        raise Unsupported(f"the one-hot's bins are not 0..{clip}")
    if sum(eq[0].input[1] in n.input for n in g.node) != 1:
        raise Unsupported("the one-hot's bins are shared with another node")
    t = numpy_helper.from_array(bins.astype(np.uint8), eq[0].input[1])
    if hasattr(holder, "attribute"):  # a Constant node
        holder.attribute[0].t.CopyFrom(t)
    else:
        holder.CopyFrom(t)


def channels_last_stream(model, n_freq: int, clip: int, uint8_compare: bool = False) -> bool:
    """Rewrite `model` (an onnx.ModelProto with a `dct` input, in place) to take the stream as uint8
    [N, T/8, T/8, F] (see the module's doc). Returns False when it already does; Unsupported when
    the graph is not what this rewrite knows."""
    from onnx import TensorProto, helper

    if model_layout(model) == DCT_NHWC:
        return False
    g = model.graph
    inp = next((i for i in g.input if i.name == INPUT), None)
    if inp is None:
        raise Unsupported(f"no {INPUT!r} input")
    dims = inp.type.tensor_type.shape.dim
    old = [d.dim_param or d.dim_value for d in dims]
    if len(old) != 4 or old[1] != n_freq or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise Unsupported(f"{INPUT!r} is {old}, not float32 [N, {n_freq}, h, w]")
    readers = [n for n in g.node if INPUT in n.input]
    if uint8_compare:
        _uint8_bins(g, readers, clip)
    for n in readers:
        n.input[:] = [ADAPTER_OUT if i == INPUT else i for i in n.input]
    if uint8_compare:
        head = [helper.make_node("Transpose", [INPUT], [ADAPTER_OUT], perm=[0, 3, 1, 2], name=PREFIX + "Transpose")]
    else:
        head = [helper.make_node("Cast", [INPUT], [PREFIX + "float"], to=TensorProto.FLOAT, name=PREFIX + "Cast"),
                helper.make_node("Transpose", [PREFIX + "float"], [ADAPTER_OUT], perm=[0, 3, 1, 2],
                                 name=PREFIX + "Transpose")]
    rest = list(g.node)
    del g.node[:]
    g.node.extend(head + rest)
    inp.type.tensor_type.elem_type = TensorProto.UINT8
    for d, v in zip(dims, [old[0], old[2], old[3], old[1]]):
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    replace_metadata(model, {DCT_LAYOUT_KEY: DCT_NHWC})
    return True


def rewrite_file(path, dct: tuple[int, int], uint8_compare: bool, tiles: np.ndarray, tables: np.ndarray | None,
                 atol: float = 0.0) -> dict:
    """channels_last_stream on the ONNX file at `path`, in place, checked: the rewritten file must give
    the old one's outputs on uint8 tiles [N, T, T, 3] and their tables (no arithmetic changed), else
    Unsupported and the file is left as it was. Returns what the check measured, for the package's
    validation record."""
    import onnx

    from .golden import OUTPUT_NAMES, ort_session, run_tiles

    model = onnx.load(str(path))
    before = run_tiles(ort_session(path), tiles, tables)
    if not channels_last_stream(model, *dct, uint8_compare=uint8_compare):
        return {"layout": DCT_NHWC, "rewritten": False}
    onnx.checker.check_model(model)
    blob = model.SerializeToString()
    after = run_tiles(ort_session(blob), tiles, tables)
    diff = {n: float(np.abs(a - b).max()) for n, a, b in zip(OUTPUT_NAMES, after, before)}
    if max(diff.values()) > atol:
        raise Unsupported(f"{path}: taking the stream channels-last changed the outputs by {diff} (> {atol})")
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    return {"layout": DCT_NHWC, "rewritten": True, "compare": "uint8" if uint8_compare else "float32",
            "max_abs": diff}
