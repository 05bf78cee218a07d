"""Damaged manifests (issue #19): one validator for `verify` and the runtime, one line naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from defaker_edge.errors import ArtifactError
from defaker_edge.runtime import Detector
from defaker_edge.runtime.schema import validate

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import tiny_package  # noqa: E402

SCHEMA = Path(__file__).parent.parent / "docs" / "manifest.schema.json"


def _set(path: str, value):
    def edit(m):
        *head, last = path.split(".")
        d = m
        for k in head:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if value is KeyError:
            del d[last]
        elif isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return edit


# (edit, the field the one-line error must name, whether JSON Schema can see it)
DAMAGE = {
    "golden_string": (_set("golden", "golden.npz"), "golden", True),
    "input_list": (_set("input", [64, 64]), "input", True),
    "mean_number": (_set("input.mean", 0.5), "input.mean", True),
    "mean_len2": (_set("input.mean", [0.5, 0.5]), "input.mean", True),
    "atol_text": (_set("golden.atol", "loose"), "golden.atol", True),
    "thresholds_removed": (_set("thresholds", KeyError), "thresholds", True),
    "band_removed": (_set("thresholds.band", KeyError), "thresholds.band", True),
    "threshold_2": (_set("thresholds.threshold", 2.0), "thresholds.threshold", True),
    "unknown_precision": (_set("files.1.precision", "int4"), "files[1].precision", True),
    "raised_atol": (_set("golden.atol.int8-cpu", 100.0), "golden.atol.int8-cpu", True),
    "overlap_off_grid": (_set("input.overlap", 12), "input.overlap", True),
    "overlap_over_half": (_set("input.overlap", 40), "input.overlap", False),  # tile 64: at most 32
    "tile_text": (_set("input.tile", "64"), "input.tile", True),
    "std_zero": (_set("input.std", [0.2, 0.0, 0.2]), "input.std", True),
    "golden_sha_missing": (_set("golden.sha256", KeyError), "golden.sha256", True),
    "path_escapes": (_set("files.0.path", "../../etc/passwd"), "files[0].path", True),
    "band_without_threshold": (_set("thresholds.band", [0.7, 0.9]), "thresholds.band", False),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from runtime_helpers import write_manifest

    root = tiny_package(tmp_path_factory.mktemp("schema") / "pkg")
    write_manifest(root, band=[0.4, 0.6])  # every field present, as the export writes it
    return root


@pytest.fixture
def pkg(tmp_path, base):
    import shutil

    dst = tmp_path / "pkg"
    shutil.copytree(base, dst)
    return dst


def _edit(pkg: Path, fn) -> dict:
    m = json.loads((pkg / "manifest.json").read_text())
    fn(m)
    (pkg / "manifest.json").write_text(json.dumps(m))
    return m


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_manifest_is_one_line_naming_the_field(pkg, case):
    from defaker_edge.export.package import verify_package

    fn, field, _ = DAMAGE[case]
    _edit(pkg, fn)
    with pytest.raises(ArtifactError) as e:
        Detector.load(pkg)
    msg = str(e.value)
    assert "\n" not in msg and f": {field}: " in msg, msg
    rep = verify_package(pkg, golden=False)  # the same validator, every problem listed
    assert any(p.message.startswith(f"{field}: ") for p in rep.problems), [str(p) for p in rep.problems]


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_published_json_schema_agrees(pkg, case):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    good = json.loads((pkg / "manifest.json").read_text())
    jsonschema.validate(good, schema)
    fn, _, visible = DAMAGE[case]
    bad = _edit(pkg, fn)
    if visible:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_default_package_passes_both():
    jsonschema = pytest.importorskip("jsonschema")
    m = json.loads((Path(__file__).parent.parent / "defaker_edge" / "models" / "default" / "manifest.json").read_text())
    assert validate(m, strict=True) == []
    jsonschema.validate(m, json.loads(SCHEMA.read_text()))


def test_additions_to_come_are_accepted(pkg):
    """A gate record with keys this reader does not know, and extra model inputs, must not break it."""
    m = _edit(pkg, lambda m: (m.update(gate={"anything": 1, "nested": {"x": [1]}}),
                              m["files"][1].update(gate={"auc": 0.9, "future_key": "ok"}),
                              m["input"].update(extra={
                                  "dct": {"shape": [-1, 24, 8, 8], "dtype": "float32", "freqs": 24, "clip": 10, "new": 1},
                                  "qtable": {"shape": [-1, 64], "dtype": "float32"}}),
                              m.update(some_new_block={"v": 2})))
    assert validate(m) == [] and validate(m, strict=True) == []
    det = Detector.load(pkg)
    det.close()
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(m, json.loads(SCHEMA.read_text()))
    bad = _edit(pkg, lambda m: m["input"].update(extra={"dct": {"shape": [-1, 24, 8, 8], "dtype": "float32",
                                                                "freqs": 0, "clip": 10}}))
    fields = [f for _, f, _ in validate(bad)]
    assert "input.extra.dct.freqs" in fields and "input.extra.qtable" in fields
    unknown = _edit(pkg, lambda m: m["input"].update(extra={"dct": {"shape": [1], "dtype": "float32", "freqs": 1,
                                                                    "clip": 1}, "qtable": {"shape": [1], "dtype": "f"},
                                                            "exif": {"shape": [1], "dtype": "f"}}))
    assert any("exif" in msg for _, _, msg in validate(unknown))


def test_swapped_golden_file_is_refused(pkg):
    import numpy as np

    with np.load(pkg / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["input_u8"] = np.zeros_like(arrays["input_u8"])
    np.savez(pkg / "golden.npz", **arrays)
    with pytest.raises(ArtifactError, match="golden.npz: sha256 does not match"):
        Detector.load(pkg)


def test_cli_prints_one_line_for_a_damaged_manifest(pkg, tmp_path):
    from PIL import Image

    _edit(pkg, DAMAGE["raised_atol"][0])
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    r = subprocess.run([sys.executable, "-m", "defaker_edge", "check", str(tmp_path / "a.png"), "--package", str(pkg)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "golden.atol.int8-cpu" in r.stderr and r.stdout == ""
