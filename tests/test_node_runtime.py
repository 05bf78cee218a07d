"""The shipped package runs without Python: onnxruntime-node (npm) on the golden tile (the FP32 and
INT8-CPU files, and the FP32 file as the pixels graph, which takes only the pixels and the table).

tests/node/golden.mjs loads the package's ONNX file in Node, feeds it (a) the Python runtime's
inputs as raw little-endian files and (b) inputs it builds itself from the decoded pixels and the
8x8 luma table, as docs/INTERFACES.md tells a C, Java or Swift caller to, and compares both runs'
outputs with golden.npz within the manifest's atol. Skipped (with the reason) where node or the
module is missing: `make test` installs the module into .cache/npm when npm is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from defaker_edge.runtime.package import DEFAULT_PACKAGE, load_golden, load_package
from defaker_edge.runtime.tiling import (DCT_NHWC, PIXELS, RAW_FILL, check_format, extra_inputs, input_buffer,
                                         model_layout, prepare)

onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "node" / "golden.mjs"
# where `make test` puts `npm install --prefix .cache/npm onnxruntime-node`; ORT_NODE_DIR overrides
MODULE_DIR = Path(os.environ.get("ORT_NODE_DIR", ROOT / ".cache" / "npm"))


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the non-Python run needs Node.js and onnxruntime-node)")
    if not (MODULE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip(f"onnxruntime-node is not installed in {MODULE_DIR} "
                    "(`npm install --prefix .cache/npm onnxruntime-node --onnxruntime-node-install=skip`, "
                    "which `make test` runs when npm is there)")
    return node


def _raw(out: Path, name: str, a: np.ndarray) -> dict:
    """`a` as a raw little-endian file beside the descriptor, and its entry."""
    a = np.ascontiguousarray(a)
    a.astype(a.dtype.newbyteorder("<"), copy=False).tofile(out / f"{name}.bin")
    return {"file": f"{name}.bin", "dtype": str(a.dtype), "shape": list(a.shape)}


def write_descriptor(out: Path, pkg_dir: Path, precision: str) -> Path:
    """The golden tile's pixels and table, the runtime's feeds for `precision` and its golden outputs.
    "fp32-pixels": the package's FP32 file made into the pixels graph here (export.pixels_graph)."""
    pkg = load_package(pkg_dir)
    golden = load_golden(pkg)
    if precision == "fp32-pixels":
        from defaker_edge.export.pixels_graph import write_pixels_model

        model = write_pixels_model(pkg.path_of(pkg.onnx("fp32")), out / "pixels.onnx", pkg.dct)
        fmt, precision = PIXELS, "fp32"
    else:
        entry = pkg.onnx(precision)
        assert entry is not None, f"the package has no {precision} ONNX file"
        model = pkg.path_of(entry)
        fmt = check_format((entry.raw.get("input") or {}).get("format"))  # the manifest's declaration
    layout = model_layout(onnx.load(str(model), load_external_data=False))
    x = golden.input_u8
    tile = x.shape[1]
    feeds = {"image": prepare(x, fmt, out=input_buffer(fmt, len(x), tile)),
             **extra_inputs(x, golden.qtable, pkg.dct, fmt, layout)}
    fl, ml = golden.outputs[precision]
    desc = {"model": str(model), "format": fmt, "tile": tile,
            "mean": list(pkg.mean), "std": list(pkg.std), "pad_fill": RAW_FILL.tolist(),
            "dct": {"freqs": pkg.dct[0], "clip": pkg.dct[1], "layout": layout} if pkg.dct else None,
            "pixels": _raw(out, "pixels", x[0]),
            "qtable": _raw(out, "qtable", np.asarray(golden.qtable, np.float32).reshape(64)),
            "feeds": {k: _raw(out, f"feed_{k}", v) for k, v in feeds.items()},
            "expected": {"fake_logit": _raw(out, "fake_logit", fl), "mask_logits": _raw(out, "mask_logits", ml)},
            "atol": pkg.golden_atol.get(precision, 1e-3)}
    path = out / "descriptor.json"
    path.write_text(json.dumps(desc, indent=1))
    return path


@pytest.mark.parametrize("precision", ["fp32", "int8-cpu", "fp32-pixels"])
def test_shipped_package_runs_in_onnxruntime_node(tmp_path, precision):
    node = _node()
    desc = write_descriptor(tmp_path, DEFAULT_PACKAGE, precision)
    r = subprocess.run([node, str(SCRIPT), str(desc)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ORT_NODE_DIR": str(MODULE_DIR)})
    assert r.stdout.strip(), f"node printed nothing: {r.stderr[-2000:]}"
    res = json.loads(r.stdout.strip().splitlines()[-1])
    atol = res["atol"]
    # the binding runs the file like Python's ORT: the same feeds give the golden outputs
    assert res["given"]["err"] <= atol, res
    # a caller that builds the inputs from pixels + table by the documented recipe gets them too
    assert res["image_mismatch"] == 0, res
    assert res["dct_mismatch"] in (0, None), res  # the stream built in JS: every coefficient equal
    if precision != "fp32-pixels":  # the shipped files take the stream uint8 channels-last
        assert json.loads(desc.read_text())["dct"]["layout"] == DCT_NHWC
    assert res["built"]["err"] <= atol, res
    assert r.returncode == 0, r.stderr[-2000:]
