"""FP32 student -> ONNX, checked (onnx full check), simplified (onnxslim) and validated against PyTorch.

Export uses the TorchScript exporter (dynamo=False): it takes `dynamic_axes`, and it is the path the
quantize stage uses too (DESIGN §7), so every ONNX file in a package comes out of the same exporter.
Only the batch axis is dynamic: the tile is fixed, so TensorRT and ORT can plan static spatial shapes.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, DefakerError
from ..runtime.tiling import DCT_KEY
from .manifest import INPUT_NAME, OUTPUT_NAMES

log = logging.getLogger(__name__)


class ValidationError(DefakerError):
    """The exported ONNX does not reproduce PyTorch within tolerance (or fails the ONNX checker)."""


@dataclass
class OutputDiff:
    max_abs: float
    mean_abs: float
    limit: float


@dataclass
class ValidationReport:
    """Max/mean |ONNX - PyTorch| per input kind ("random", "real") and output."""

    atol: float
    rtol: float
    diffs: dict[str, dict[str, OutputDiff]] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(d.max_abs <= d.limit for per in self.diffs.values() for d in per.values())

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "ok": self.ok, "n": self.n,
                "diffs": {k: {o: asdict(d) for o, d in v.items()} for k, v in self.diffs.items()}}

    def summary(self) -> str:
        return "; ".join(f"{kind}/{o}: max {d.max_abs:.2e} mean {d.mean_abs:.2e} (limit {d.limit:.2e})"
                         for kind, per in self.diffs.items() for o, d in per.items())


def export_onnx(model, tile: int, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write the model as ONNX with input `image` [B,3,T,T] (B dynamic) and outputs fake_logit, mask_logits."""
    import torch

    from ..student.inputs import dct_spec, dummy_inputs, input_names

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = dummy_inputs(model, 2, tile)  # B=2 so the tracer cannot specialize a size-1 batch
    names = list(input_names(model))
    axes = {**{n: {0: "batch"} for n in names}, **{n: {0: "batch"} for n in OUTPUT_NAMES}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; chosen on purpose (see top)
        torch.onnx.export(model, dummy, str(path), dynamo=False, opset_version=opset,
                          input_names=names, output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          do_constant_folding=True, external_data=False)
    spec = dct_spec(model)
    if spec is not None:  # the runtime prepares the stream's inputs by this (runtime.tiling.DCT_KEY)
        set_metadata(path, {DCT_KEY: f"{spec[0]},{spec[1]}"})
    return pin_io_shapes(path, tile)


def replace_metadata(model, props: dict[str, str], drop: tuple[str, ...] = ()) -> None:
    """Add or replace an in-memory ModelProto's metadata_props entries, and remove the keys in `drop`."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props and p.key not in drop]
    del model.metadata_props[:]
    for k, v in [*keep, *props.items()]:
        model.metadata_props.add(key=k, value=v)


def set_metadata(path: str | os.PathLike, props: dict[str, str]) -> None:
    """Add or replace ONNX metadata_props entries of the file at `path`, in place."""
    import onnx

    m = onnx.load(str(path))
    replace_metadata(m, props)
    onnx.save(m, str(path))


def pin_io_shapes(path: str | os.PathLike, tile: int) -> Path:
    """Write the contract's static dims into the graph's declared I/O shapes (batch stays symbolic).

    A ViT student reshapes token sequences back into a mask, and the exporter can leave that output's
    spatial dims symbolic; the runtime and TensorRT then see [B,1,?,?]. The real shape is fixed by the
    contract (T/4) and `validate_onnx` checks it against PyTorch, so declaring it is safe.
    """
    import onnx

    from ..runtime.tiling import input_shape, model_dct, model_format

    m = onnx.load(str(path))
    fmt = model_format(m)  # the raw-pixel CPU INT8 file has its own input
    want = {INPUT_NAME: list(input_shape(fmt, tile)), OUTPUT_NAMES[0]: [], OUTPUT_NAMES[1]: [1, tile // 4, tile // 4]}
    dct = model_dct(m)
    if dct is not None:
        want.update(dct=[dct[0], tile // 8, tile // 8], qtable=[64])
    changed = False
    for vi in (*m.graph.input, *m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        rest = want.get(vi.name)
        if rest is None or len(dims) != len(rest) + 1:
            continue
        for d, v in zip(list(dims)[1:], rest):
            if not d.HasField("dim_value") or d.dim_value != v:
                d.Clear()
                d.dim_value = v
                changed = True
    if changed:
        onnx.save(m, str(path))
    return Path(path)


def check_onnx(path: str | os.PathLike) -> None:
    """onnx.checker full check (types and shapes inferred); ValidationError naming the file on failure."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ValidationError(f"{path}: fails onnx.checker full check: {str(e).splitlines()[0][:300]}") from None


def simplify_onnx(path: str | os.PathLike) -> Path:
    """onnxslim in place (constant folding, dead nodes); the caller re-validates afterwards."""
    import onnx
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(str(path))
    if slim is None:
        raise ArtifactError(f"{path}: onnxslim returned nothing")
    onnx.save(slim, str(path))
    tile = slim.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    return pin_io_shapes(path, tile) if tile else Path(path)


def io_signature(path: str | os.PathLike) -> dict[str, list]:
    """{tensor name: shape with -1 for symbolic dims} for inputs and outputs, read by ORT (no onnx needed)."""
    from .golden import ort_session

    sess = ort_session(path)
    return {t.name: [d if isinstance(d, int) else -1 for d in t.shape]
            for t in (*sess.get_inputs(), *sess.get_outputs())}


def validate_onnx(model, path: str | os.PathLike, inputs: dict[str, np.ndarray], atol: float = 1e-3,
                  rtol: float = 1e-3, batch: int = 4) -> ValidationReport:
    """Compare ONNX Runtime with PyTorch on each named input set (float32 [N,3,T,T], or a dict of
    the model's inputs by name: image, dct, qtable).

    The limit per output is atol + rtol * max|PyTorch output|: logits of a trained net reach tens,
    and a fixed absolute bound would either be meaningless for small outputs or fail large ones.
    Raises ValidationError (with the numbers) when an output is past its limit.
    """
    import torch

    from .golden import ort_session, run_onnx

    from ..student.inputs import input_names

    sess = ort_session(path)
    rep = ValidationReport(atol=atol, rtol=rtol)
    model = model.eval()
    order = input_names(model)  # the model's call order; the feeds are a dict by name
    for kind, feeds in inputs.items():
        feeds = feeds if isinstance(feeds, dict) else {INPUT_NAME: feeds}
        x = feeds[INPUT_NAME]
        refs: list[list[np.ndarray]] = [[], []]
        gots: list[list[np.ndarray]] = [[], []]
        for i in range(0, len(x), batch):
            fb = {k: np.ascontiguousarray(v[i:i + batch], dtype=np.float32) for k, v in feeds.items()}
            with torch.no_grad():
                ref = model(*[torch.from_numpy(fb[n]) for n in order])
            for j, r in enumerate(ref):
                refs[j].append(r.detach().float().numpy())
            for j, g in enumerate(run_onnx(sess, fb)):
                gots[j].append(g)
        rep.n[kind] = len(x)
        rep.diffs[kind] = {}
        for j, name in enumerate(OUTPUT_NAMES):
            r, g = np.concatenate(refs[j]), np.concatenate(gots[j])
            if r.shape != g.shape:
                raise ValidationError(f"{path}: {name} shape {list(g.shape)} from ONNX, {list(r.shape)} from PyTorch")
            d = np.abs(r.astype(np.float64) - g)
            rep.diffs[kind][name] = OutputDiff(float(d.max()), float(d.mean()), atol + rtol * float(np.abs(r).max()))
    if not rep.ok:
        raise ValidationError(f"{path}: ONNX disagrees with PyTorch beyond tolerance: {rep.summary()}")
    log.info("validated %s: %s", Path(path).name, rep.summary())
    return rep
