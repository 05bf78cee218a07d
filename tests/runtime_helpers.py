"""A tiny deployment package for runtime tests, written in the docs/INTERFACES.md format.

A small seeded conv net with the student contract (x[B,3,T,T] -> fake_logit[B],
mask_logits[B,1,T/4,T/4]) at T=64, exported with torch.onnx.export (dynamo=False, opset 17,
dynamic batch), an int8-cpu variant from onnxruntime's quantize_static (QDQ, S8 weights / U8
activations), golden.npz and manifest.json. Swap `build_tiny_package` for the export stage's
package writer once it lands; the tests only rely on the format.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from defaker_edge.artifacts import sha256_file
from defaker_edge.runtime import tiling

TILE = 64
OVERLAP = 16
_CACHE: dict[tuple, Path] = {}


def _model(seed: int = 0, nan: bool = False):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
            self.mask = nn.Conv2d(8, 1, 1)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            f = self.enc(x)
            fake = self.head(f.mean(dim=(2, 3))).reshape(-1)
            m = self.mask(f)
            if nan:  # a broken "quantized" file: NaN comes out whatever goes in
                fake = fake * float("nan")
                m = m * float("nan")
            return fake, m

    return Tiny().eval()


def _export(model, path: Path, tile: int = TILE) -> None:
    import torch

    x = torch.zeros(2, 3, tile, tile)
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["fake_logit", "mask_logits"],
                      dynamic_axes={"image": {0: "batch"}, "fake_logit": {0: "batch"}, "mask_logits": {0: "batch"}})


def _calib_tiles(n: int = 16, seed: int = 1, tile: int = TILE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, tile, tile, 3), dtype=np.uint8)


def _quantize(src: Path, dst: Path, tile: int = TILE) -> None:
    # through the quantize stage's wrapper: it survives modelopt.onnx having patched
    # onnxruntime.quantization earlier in the same test process
    from defaker_edge.quantize.ort_static import quantize_ort_static

    quantize_ort_static(src, dst, tiling.normalize(_calib_tiles(tile=tile)), batch=1)


def ort_run(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f, m = s.run(["fake_logit", "mask_logits"], {"image": x})
    return f, m


def write_manifest(root: Path, *, band=None, threshold: float = 0.5, temperature: float = 1.0,
                   extra_files: list[dict] | None = None, tile: int | None = None, overlap: int | None = None,
                   pixel_threshold: float | None = None, rerun_margin: float | None = None) -> dict:
    """(Re)write root/manifest.json with the sha256 of the files now on disk."""
    if tile is None:  # keep what the package was built with
        old = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").exists() else {}
        tile = old.get("input", {}).get("tile", TILE)
        overlap = old.get("input", {}).get("overlap", OVERLAP) if overlap is None else overlap
    overlap = OVERLAP if overlap is None else overlap
    files = []
    for name, prec, role in (("model_fp32.onnx", "fp32", "fallback"), ("model_int8_cpu.onnx", "int8-cpu", None)):
        p = root / name
        if p.exists():
            files.append({"path": name, "sha256": sha256_file(p), "bytes": p.stat().st_size,
                          "precision": prec, "format": "onnx", "role": role})
    files += extra_files or []
    m = {
        "format": "defaker-package/1", "schema_version": 1, "model_id": "tiny-test", "created": "2026-01-01T00:00:00+00:00",
        "input": {"name": "image", "shape": [-1, 3, tile, tile], "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "scale": 1 / 255, "mean": list(tiling.MEAN), "std": list(tiling.STD), "tile": tile,
                  "overlap": overlap, "stride": tile - overlap, "grid": 8},
        "outputs": [{"name": "fake_logit", "shape": [-1]}, {"name": "mask_logits", "shape": [-1, 1, tile // 4, tile // 4]}],
        "files": files,
        "thresholds": {"temperature": temperature, "threshold": threshold, "band": band, "target_fpr": 0.05,
                       "aggregate": "max", "measured": {"fpr": 0.05, "tpr": 0.9, "n": 100}},
        "calibration": {"sha256": "0" * 64, "n": 16}, "teacher": {"id": "tiny", "sha256": "0" * 64},
        "metrics": {"fp32": {"image_auc": 0.5, "pixel_f1": 0.0}, "int8-cpu": {"image_auc": 0.5, "pixel_f1": 0.0}},
        "tools": {}, "golden": {"file": "golden.npz", "sha256": sha256_file(root / "golden.npz"),
                                "atol": {"fp32": 1e-3, "int8-cpu": 0.05}},
    }
    if rerun_margin is not None:
        m["thresholds"]["rerun_margin"] = rerun_margin
    if pixel_threshold is not None:
        m["thresholds"]["pixel_threshold"] = pixel_threshold
    (root / "manifest.json").write_text(json.dumps(m, indent=2))
    return m


def write_golden(root: Path, tile: int = TILE) -> None:
    rng = np.random.default_rng(7)
    u8 = rng.integers(0, 256, (1, tile, tile, 3), dtype=np.uint8)
    x = tiling.normalize(u8)
    out = {"input_u8": u8}
    for name, prec in (("model_fp32.onnx", "fp32"), ("model_int8_cpu.onnx", "int8-cpu")):
        if (root / name).exists():
            f, m = ort_run(root / name, x)
            out[f"fake_logit__{prec}"], out[f"mask_logits__{prec}"] = f, m
    np.savez(root / "golden.npz", **out)


def build_tiny_package(out: Path, *, band=None, threshold: float = 0.5, int8: bool = True,
                       tile: int = TILE, overlap: int = OVERLAP) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _export(_model(), out / "model_fp32.onnx", tile)
    if int8:
        _quantize(out / "model_fp32.onnx", out / "model_int8_cpu.onnx", tile)
    write_golden(out, tile)
    write_manifest(out, band=band, threshold=threshold, tile=tile, overlap=overlap)
    return out


def tiny_package(dst: Path, **kw) -> Path:
    """A fresh copy (tests may break it) of a package built once per process."""
    key = tuple(sorted(kw.items()))
    if key not in _CACHE or not (_CACHE[key] / "manifest.json").exists():
        _CACHE[key] = build_tiny_package(Path(tempfile.mkdtemp(prefix="defaker-tinypkg-")), **kw)
    dst = Path(dst)
    shutil.copytree(_CACHE[key], dst)
    return dst


def write_nan_onnx(path: Path) -> None:
    """An ONNX with the student contract whose every output is NaN."""
    _export(_model(nan=True), Path(path))


if __name__ == "__main__":  # python tests/runtime_helpers.py OUT [TILE [OVERLAP]]: a package for scripts/benchmarks
    a = sys.argv[1:]
    print(build_tiny_package(Path(a[0]), tile=int(a[1]) if len(a) > 1 else TILE,
                             overlap=int(a[2]) if len(a) > 2 else OVERLAP))
