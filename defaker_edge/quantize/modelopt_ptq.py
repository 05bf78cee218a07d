"""ModelOpt post-training quantization (fake quant on CPU) and ONNX export.

INT8: `mtq.quantize(model, INT8_DEFAULT_CFG, forward_loop)` (per-channel weights, per-tensor
activations, max calibration), then the legacy exporter (`torch.onnx.export(dynamo=False)`)
turns each TensorQuantizer into QuantizeLinear/DequantizeLinear that ORT and TensorRT both run.
FP8: ModelOpt's FP8 fake quant exports TensorRT-only ops, so the FP8 file is made by ModelOpt's
ONNX quantizer from the FP32 ONNX (`modelopt.onnx.quantization.quantize(quantize_mode="fp8")`),
which writes standard Q/DQ that ORT's CPU provider also runs. The torch FP8 fake quant is still
used to rank layer sensitivity.

Layers are kept in full precision by disabling their quantizers after calibration (not by
re-calibrating), so every exclusion the auto-exclude search tries shares one calibration.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("fake_logit", "mask_logits")
# The default configs switch off modules by the names of VLMs' vision towers and projectors
# (they target LLM quantization). In a student those names are the network itself, so drop them.
_VLM_SKIPS = ("*vision_tower*", "*visual*", "*vision_model*", "*multi_modal_projector*", "*embed_vision*")


def _mtq():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # modelopt warns about the transformers version on import
        import modelopt.torch.quantization as mtq
    return mtq


def mtq_config(precision: str) -> dict:
    mtq = _mtq()
    base = mtq.FP8_DEFAULT_CFG if precision == "fp8" else mtq.INT8_DEFAULT_CFG
    cfg = copy.deepcopy(base)
    cfg["quant_cfg"] = [e for e in cfg["quant_cfg"]
                        if not (isinstance(e, dict) and e.get("quantizer_name") in _VLM_SKIPS)]
    return cfg


def quantized_layers(model) -> list[str]:
    """Names of the modules that own an enabled input or weight quantizer, in model order."""
    names = []
    for name, mod in model.named_modules():
        qs = [getattr(mod, a, None) for a in ("input_quantizer", "weight_quantizer")]
        if any(q is not None and getattr(q, "is_enabled", False) for q in qs):
            names.append(name)
    return names


def matching(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    pats = [re.compile(p) for p in patterns]
    return [n for n in names if any(p.search(n) for p in pats)]


def set_layers_enabled(model, layers: Iterable[str], enabled: bool) -> None:
    """Enable or disable the input/weight/output quantizers of the named modules."""
    want = set(layers)
    for name, mod in model.named_modules():
        if name not in want:
            continue
        for a in ("input_quantizer", "weight_quantizer"):
            q = getattr(mod, a, None)
            if q is not None:
                q.enable() if enabled else q.disable()


def calibrate(model, batches: list[np.ndarray], precision: str):
    """A calibrated fake-quant copy of `model` (the original is left untouched)."""
    import torch
    from tqdm import tqdm

    mtq = _mtq()
    qmodel = copy.deepcopy(model).eval()

    def forward_loop(m):
        with torch.no_grad():
            for x in tqdm(batches, desc=f"calibrate {precision}", unit="batch", leave=False, disable=None):
                # a tuple: the image and the compression-history stream's inputs
                m(*[torch.from_numpy(a) for a in (x if isinstance(x, tuple) else (x,))])

    # ModelOpt prints progress ("Inserted N quantizers") on stdout, which belongs to --json output
    with contextlib.redirect_stdout(sys.stderr):
        return mtq.quantize(qmodel, mtq_config(precision), forward_loop)


def export_onnx(model, path: str | Path, tile: int, opset: int = 17) -> Path:
    """Export with the legacy (TorchScript) exporter: dynamic batch, the contract's I/O names.

    dynamo=False because the dynamo exporter fails on ModelOpt's quantizers, and the legacy one
    maps them to QuantizeLinear/DequantizeLinear; the FP32 file goes the same way so that node
    names (used by --exclude on the ONNX paths) match between the two.
    """
    import torch
    import warnings

    from ..runtime.tiling import DCT_KEY
    from ..student.inputs import dct_spec, dummy_inputs, input_names

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = dummy_inputs(model, 2, tile)  # B=2 so the tracer cannot specialize a size-1 batch
    names = list(input_names(model))
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # tracer warnings about python bools in quantizer code
        torch.onnx.export(model.eval(), x, str(path), dynamo=False, opset_version=max(13, opset),
                          input_names=names, output_names=list(OUTPUT_NAMES),
                          dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAMES[0]: {0: "batch"},
                                        OUTPUT_NAMES[1]: {0: "batch"}})
    spec = dct_spec(model)
    if spec is not None:
        from ..export.onnx_export import set_metadata

        set_metadata(path, {DCT_KEY: f"{spec[0]},{spec[1]}"})
    return path


def node_module(node_name: str) -> str:
    """The dotted module path of a node named by the legacy exporter's scopes.

    Each scope is a called module, named by its parent's scope plus `.N` for Sequential children:
    `/stem/stem.0/Conv` is module `stem.0`; `/stages.0/blocks/blocks.0/dw/dw.0/Conv` (a ModuleList
    is never called, so it has no scope of its own) is `stages.0.blocks.0.dw.0`; `/lat.3/lat.3.0/Conv`
    is `lat.3.0`.
    """
    path: list[str] = []
    prev = None
    for comp in node_name.strip("/").split("/")[:-1]:  # the last part is the op's own name
        if prev is not None and comp.startswith(prev + "."):
            path += comp[len(prev) + 1:].split(".")  # `lat.3` then `lat.3.0`: child 0 of lat.3
        else:
            path += comp.split(".")
        prev = comp
    return ".".join(path)


def onnx_nodes_for(onnx_path: str | Path, layers: Iterable[str]) -> list[str]:
    """ONNX node names that the legacy exporter made from the named modules (or their children)."""
    import onnx

    want = list(layers)
    g = onnx.load(str(onnx_path), load_external_data=False).graph
    out = []
    for n in g.node:
        mod = node_module(n.name)
        if any(mod == w or mod.startswith(w + ".") for w in want):
            out.append(n.name)
    return out


def fp8_onnx(fp32_onnx: str | Path, out: str | Path, calib: np.ndarray, exclude_nodes: list[str],
             extra: dict[str, np.ndarray] | None = None) -> Path:
    """FP8 E4M3 Q/DQ ONNX from the FP32 ONNX with ModelOpt's ONNX quantizer (CPU calibration).

    high_precision_dtype="fp32": the unquantized part stays FP32, so ORT's CPU provider runs the
    file and the gate measures FP8's own error (TensorRT still chooses its kernels per layer).
    """
    import shutil
    import tempfile
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from modelopt.onnx.quantization import quantize as onnx_quantize
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(str(getattr(e, "name", None) or e).splitlines()[0],
                                     "FP8 ONNX quantization", "pip install 'nvidia-modelopt[onnx]'") from None
    out = Path(out)
    # ModelOpt writes intermediate files next to its input: work on a private copy
    with tempfile.TemporaryDirectory(prefix="defaker-fp8-") as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copyfile(fp32_onnx, src)
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for --json
            onnx_quantize(str(src), quantize_mode="fp8", calibration_data={INPUT_NAME: calib, **(extra or {})},
                          calibration_method="max", calibration_eps=["cpu"],
                          nodes_to_exclude=[f"^{re.escape(n)}$" for n in exclude_nodes] or None,
                          high_precision_dtype="fp32", output_path=str(Path(tmp) / "fp8.onnx"),
                          log_level="WARNING")
        shutil.copyfile(Path(tmp) / "fp8.onnx", out)
    # ModelOpt's ONNX quantizer drops the model's metadata; the runtime reads the DCT stream from it
    import onnx

    from ..export.onnx_export import set_metadata

    src = {p.key: p.value for p in onnx.load(str(fp32_onnx), load_external_data=False).metadata_props}
    if src:
        set_metadata(out, src)
    return out
