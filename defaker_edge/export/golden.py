"""Real input tiles and the golden input/output pair (numpy + onnxruntime; no torch).

The golden pair is the runtime's load-time self-test: one fixed real tile, and what every ONNX file
in the package answered for it when the package was written. A runtime that gets something else
(a wrong file, a broken provider, a different ORT) knows before it judges a single user image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from ..runtime.tiling import TileSpec, cut_tiles, tile_origins
from .manifest import DEFAULT_ATOL, GOLDEN, INPUT_NAME, OUTPUT_NAMES, Problem, onnx_files


def generated_image(h: int = 768, w: int = 1024, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like RGB image (smooth shading, edges, texture, sensor-like noise).

    Used where no dataset is given: random normal noise is not what the model sees, and validation
    on "real" inputs exists precisely to exercise realistic activation ranges.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c, (a, b) in enumerate(((0.6, 0.2), (0.3, 0.5), (0.1, 0.7))):
        img[..., c] = 90 + 80 * np.sin(xx / w * np.pi * (1 + c) * a + yy / h * np.pi * b)
    for _ in range(12):  # flat-coloured shapes give hard edges like objects in a scene
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(20, max(21, min(h, w) // 5))
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[disk] = rng.uniform(20, 235, 3)
    stripes = ((xx // 6 + yy // 6) % 2)[..., None] * 12.0  # fine texture
    img += np.where((yy > h // 2)[..., None], stripes, 0)
    img += rng.normal(0, 3.0, img.shape)  # sensor noise: the residual stem's bread and butter
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _dataset_images(data: str | os.PathLike, n: int) -> list[np.ndarray]:
    from ..data import load_dataset
    from ..data.io import load_dataset_image

    samples = load_dataset(data)
    if not samples:
        raise ArtifactError(f"{data}: no images to validate the export on")
    # prefer held-out images; mix labels so both real and fake activations are exercised
    held = [s for s in samples if s.split == "test"] or samples
    picked = sorted(held, key=lambda s: (s.label, s.key))
    chosen = picked[:: max(1, len(picked) // n)][:n]
    return [load_dataset_image(s.image) for s in chosen]


# Real colour photographs bundled with the package (assets/LICENSES.md); the first gives the golden tile.
PHOTO_DIR = Path(__file__).resolve().parents[1] / "assets" / "photos"
BUNDLED = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")


def bundled_images(n: int) -> list[np.ndarray]:
    """Up to n bundled real photos; [] where the assets are not installed."""
    from ..data.io import load_dataset_image

    return [load_dataset_image(PHOTO_DIR / f) for f in BUNDLED[:n] if (PHOTO_DIR / f).is_file()]


def real_tiles(tile: int, data: str | os.PathLike | None = None, n_images: int = 3, max_tiles: int = 8) -> np.ndarray:
    """uint8 [N, T, T, 3] native-resolution tiles of a few real images.

    From the dataset when one is given, else the bundled photos, else the generated image.
    """
    images = _dataset_images(data, n_images) if data else (bundled_images(n_images) or [generated_image()])
    spec = TileSpec(tile=tile, overlap=min(64, tile // 4))
    out = []
    for img in images:
        origins = tile_origins(img.shape[0], img.shape[1], spec)
        step = max(1, len(origins) // max(1, max_tiles // len(images)))
        out.append(cut_tiles(img, origins[::step][: max(1, max_tiles // len(images))], tile))
    return np.concatenate(out)[:max_tiles]


def golden_input(tile: int, data: str | os.PathLike | None = None) -> np.ndarray:
    """uint8 [1, T, T, 3]: the first real tile (fixed: same data -> same golden input)."""
    return real_tiles(tile, data, n_images=1, max_tiles=1)[:1]


def ort_session(path: str | os.PathLike):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT warns about unused initializers in Q/DQ graphs; not our user's concern
    src = path if isinstance(path, bytes) else str(path)  # a path, or a serialized model
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session: Any, x: np.ndarray | dict) -> tuple[np.ndarray, np.ndarray]:
    """(fake_logit, mask_logits) of an ONNX file on normalized float32 [B, 3, T, T] (or a dict of
    its inputs by name), ORT CPU."""
    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    feeds = x if isinstance(x, dict) else {INPUT_NAME: x}
    fl, ml = sess.run(list(OUTPUT_NAMES), {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()})
    return np.asarray(fl), np.asarray(ml)


def run_tiles(path_or_session: Any, tiles_u8: np.ndarray, tables: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """run_onnx on uint8 tiles [B, T, T, 3] (+ their luma tables), prepared in the file's own input format."""
    from ..runtime.backends.onnxruntime import session_feeds

    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    fl, ml = sess.run(list(OUTPUT_NAMES), session_feeds(sess, tiles_u8, tables))
    return np.asarray(fl), np.asarray(ml)


GOLDEN_QUALITY = 85


def as_jpeg(tiles_u8: np.ndarray, quality: int = GOLDEN_QUALITY) -> tuple[np.ndarray, np.ndarray]:
    """Tiles saved as JPEG and decoded, with their luma tables [N, 64]: real inputs for the
    compression-history stream (a tile that never was a JPEG would leave it idle)."""
    import io

    from PIL import Image

    from ..runtime.dct import read_qtable

    out, tables = np.empty_like(tiles_u8), np.empty((len(tiles_u8), 64), np.float32)
    for i, t in enumerate(tiles_u8):
        b = io.BytesIO()
        Image.fromarray(t).save(b, "JPEG", quality=quality)
        with Image.open(io.BytesIO(b.getvalue())) as im:
            out[i] = np.asarray(im.convert("RGB"))
        tables[i] = read_qtable(b.getvalue())
    return out, tables


def write_golden(package: str | os.PathLike, files: dict[str, str], input_u8: np.ndarray,
                 qtable: np.ndarray | None = None) -> str:
    """Run every ONNX file ({precision: relative path}) on the golden tile (+ its luma table, for
    models with the compression-history stream); write PACKAGE/golden.npz."""
    arrays: dict[str, np.ndarray] = {"input_u8": input_u8}
    if qtable is not None:
        arrays["qtable"] = np.asarray(qtable, np.float32).reshape(-1, 64)
    for precision, rel in files.items():
        fl, ml = run_tiles(Path(package) / rel, input_u8, qtable)
        arrays[f"fake_logit__{precision}"] = fl.astype(np.float32)
        arrays[f"mask_logits__{precision}"] = ml.astype(np.float32)
    path = Path(package) / GOLDEN
    np.savez(path, **arrays)
    return GOLDEN


def golden_key(f: dict[str, Any]) -> str:
    """The name a file's golden outputs go by: its precision, and "fp32-pixels" for the pixels graph
    (export.pixels_graph: its in-graph stream may round a tie the other way, so it has its own outputs,
    judged at its precision's atol)."""
    return f"{f.get('precision')}-pixels" if f.get("role") == "pixels" else str(f.get("precision"))


def check_golden(package: str | os.PathLike, m: dict[str, Any], sessions: dict[str, Any] | None = None,
                 skip: set[str] = frozenset()) -> list[Problem]:
    """Re-run each ONNX file on the golden input; a Problem names each file whose outputs moved past atol.

    `skip`: files already reported as unloadable (no point in a second message about them).
    """
    g = m.get("golden") or {}
    gpath = Path(package) / g.get("file", GOLDEN)
    if not gpath.is_file():
        return [Problem(g.get("file", GOLDEN), "golden file missing")]
    try:
        with np.load(gpath, allow_pickle=False) as z:
            gold = {k: z[k] for k in z.files}
    except Exception as e:  # a corrupt npz raises zipfile/ValueError; report it against the file
        return [Problem(gpath.name, f"unreadable golden file ({type(e).__name__}: {e})")]
    if "input_u8" not in gold:
        return [Problem(gpath.name, "has no input_u8")]
    atol = {**DEFAULT_ATOL, **(g.get("atol") or {})}
    out: list[Problem] = []
    for f in onnx_files(m):
        prec, rel = f.get("precision"), f.get("path")
        if not rel or rel in skip:
            continue  # reported by the schema / load checks
        p = golden_key(f)
        if f"fake_logit__{p}" not in gold or f"mask_logits__{p}" not in gold:
            out.append(Problem(rel, f"no golden outputs for precision {p}"))
            continue
        try:
            fl, ml = run_tiles((sessions or {}).get(rel) or Path(package) / rel, gold["input_u8"], gold.get("qtable"))
        except Exception as e:  # ORT raises its own types for corrupt graphs; name the file
            out.append(Problem(rel, f"onnxruntime could not run it ({type(e).__name__}: {str(e)[:200]})"))
            continue
        for name, got in (("fake_logit", fl), ("mask_logits", ml)):
            ref = gold[f"{name}__{p}"]
            if got.shape != ref.shape:
                out.append(Problem(rel, f"golden {name} shape {list(got.shape)} != {list(ref.shape)}"))
                continue
            diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
            if not np.isfinite(diff) or diff > atol.get(prec, 1e-3):
                out.append(Problem(rel, f"golden {name} differs by {diff:.3g} > atol {atol.get(prec, 1e-3)}"))
    return out
