"""INT8 on the compression stream's one-hot as uint8: no float one-hot, no quantize pass over it.

The block student's DCT stream one-hots its coefficients (student.block.DCTStream: Equal against
0..clip, Cast to float, Reshape to F*(clip+1) channels) and reads them with a 1x1 conv. Quantized
as ORT does by default, the one-hot was cast to float32 and then quantized back to uint8: on a
1024² check (9 tiles of 512, 2-core Zen 4, INT8-CPU) the Cast alone took ~12% of ONNX Runtime's
time, more than the conv it feeds. A 0/1 value is its own uint8 at scale 1 and zero point 0, so
`overrides` pins that scale at calibration, and `uint8_onehot` then casts the comparison straight
to uint8 and drops the QuantizeLinear: the same integers reach the QLinearConv, nothing rounded.

Why not a lookup-and-sum (Gather of the embed weight's columns + ReduceSum, the same function): in
ONNX Runtime's CPU kernels it ran slower than the one-hot conv in FP32 (9 tiles, 2 threads, median
under load: 59-106 ms against 47-70 ms, interleaved; Gather copies 24 rows of 32 floats per block
position and ReduceSum reads them back), and ORT has no fused embedding-bag op.

Why the one-hot stays NCHW, though ORT's QLinearConv then transposes its 264 uint8 channels to NHWC
(1.1 ms, 8% of a 1024² check's INT8 time, 4 tiles of 576, 2-core Zen 4): both channels-last forms
measured slower. Equal against bins on the innermost axis ([B, H, W, F, 1] == [11]) took 3.9 ms
against 0.5 (ORT's broadcast loop is slow on an 11-wide inner axis), and a Gather of an 11x11
identity by the coefficients took 7.8 ms against 3.0 for the whole NCHW one-hot with its transpose.
A third form, bins on the axis before the frequencies ([B, H, W, 1, F] == [clip+1, 1]), is measured in
export/stream_layout.py: slower in 300 interleaved runs, faster only while the machine ran slow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def onehot_tensors(graph) -> list[str]:
    """Float tensors that are a one-hot made in the graph: Cast(Equal(...)) to float, through a
    Reshape if there is one. Their values are exactly 0 or 1."""
    from onnx import TensorProto

    prod = {o: n for n in graph.node for o in n.output}
    cons: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    out = []
    for n in graph.node:
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if n.op_type != "Cast" or to != TensorProto.FLOAT or n.input[0] not in prod or prod[n.input[0]].op_type != "Equal":
            continue
        t = n.output[0]
        nxt = cons.get(t, [])
        if len(nxt) == 1 and nxt[0].op_type == "Reshape":
            t = nxt[0].output[0]
        out.append(t)
    return out


def overrides(onnx_path: str | os.PathLike) -> dict[str, list[dict]]:
    """TensorQuantOverrides for quantize_static: each one-hot at scale 1, zero point 0 (uint8)."""
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    return {t: [{"scale": np.array(1.0, np.float32), "zero_point": np.array(0, np.uint8)}] for t in onehot_tensors(g)}


def uint8_onehot(qdq_onnx: str | os.PathLike, out: str | os.PathLike | None = None) -> int:
    """Rewrite a quantized model (in place, or to `out`): where a one-hot's QuantizeLinear has
    scale 1 and zero point 0, the Cast makes uint8 and the QuantizeLinear goes. Returns how many."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(qdq_onnx))
    g = m.graph
    init = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    done = 0
    for t in onehot_tensors(g):
        qs = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == t]
        if len(qs) != 1 or len(qs[0].input) < 3 or any(i not in init for i in qs[0].input[1:3]):
            continue
        q = qs[0]
        sc, zp = numpy_helper.to_array(init[q.input[1]]), numpy_helper.to_array(init[q.input[2]])
        if sc.size != 1 or float(sc) != 1.0 or zp.dtype != np.uint8 or int(zp) != 0:
            continue
        if any(n is not q and t in n.input for n in g.node) or t in {o.name for o in g.output}:
            continue  # the float one-hot is read elsewhere too: leave it
        node = prod[t]
        cast = node if node.op_type == "Cast" else prod[node.input[0]]
        for a in cast.attribute:
            if a.name == "to":
                a.i = TensorProto.UINT8
        for n in g.node:
            for k, x in enumerate(n.input):
                if x == q.output[0]:
                    n.input[k] = t
        g.node.remove(q)
        done += 1
    if done:
        for vi in list(g.value_info):  # inferred types of the one-hot are now stale
            g.value_info.remove(vi)
        onnx.checker.check_model(m)
    onnx.save(m, str(out or qdq_onnx))
    return done
