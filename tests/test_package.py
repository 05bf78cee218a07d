"""Package writer and verifier: manifest as INTERFACES.md says, verify passes, and names each broken file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from defaker_edge.artifacts import read_json, sha256_file, write_json  # noqa: E402
from defaker_edge.cli import main  # noqa: E402
from defaker_edge.errors import ArtifactError  # noqa: E402
from defaker_edge.export import verify_package, write_package  # noqa: E402
from defaker_edge.export.manifest import REQUIRED_KEYS, check_thresholds, verify_hashes  # noqa: E402
from defaker_edge.export.onnx_export import export_onnx  # noqa: E402
from test_export import TILE, make_dataset, make_quantized, make_student  # noqa: E402

THRESHOLDS = {"temperature": 1.3, "threshold": 0.62, "band": [0.5, 0.7], "target_fpr": 0.05, "aggregate": "max",
              "measured": {"fpr": 0.05, "tpr": 0.8, "n": 100}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkg")
    sdir = root / "student"
    model, cfg = make_student(sdir)
    write_json(sdir / "thresholds.json", THRESHOLDS)
    write_json(sdir / "report.json", {"teacher": {"id": "reference", "sha256": "ef" * 32}})
    fp32 = export_onnx(model, TILE, root / "src.onnx")
    q = make_quantized(fp32, root / "q-int8-cpu", "int8-cpu", sha256_file(sdir / "model.safetensors"))
    data = make_dataset(root / "data")
    pkg = write_package(model, cfg, root / "package", model_dir=sdir, quantized=[q], data=data)
    return pkg, root, model, cfg


def _copy(pkg, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(pkg.path, dst)
    return dst


def test_manifest_follows_the_interface(built):
    pkg, root, _, _ = built
    m = read_json(pkg.path / "manifest.json")
    assert all(k in m for k in REQUIRED_KEYS)
    assert m["format"] == "defaker-package/1" and m["schema_version"] == 1
    assert m["input"]["name"] == "image" and m["input"]["shape"] == [-1, 3, TILE, TILE] and m["input"]["tile"] == TILE
    assert m["input"]["stride"] > 0 and m["input"]["grid"] == 8 and len(m["input"]["mean"]) == 3
    assert [o["name"] for o in m["outputs"]] == ["fake_logit", "mask_logits"]
    assert m["outputs"][1]["shape"] == [-1, 1, TILE // 4, TILE // 4]
    by_p = {f["precision"]: f for f in m["files"]}
    assert by_p["fp32"]["path"] == "model_fp32.onnx" and by_p["fp32"]["role"] == "fallback"
    assert by_p["int8-cpu"]["path"] == "model_int8_cpu.onnx"
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 and f["format"] == "onnx" for f in m["files"])
    assert m["thresholds"] == THRESHOLDS  # carried from the student dir
    assert m["calibration"] == {"sha256": "cd" * 32, "n": 8}
    assert m["teacher"] == {"id": "reference", "sha256": "ef" * 32}
    assert m["metrics"]["fp32"]["image_auc"] == 0.91 and m["metrics"]["int8-cpu"]["pixel_f1"] == 0.54
    assert "onnxruntime" in m["tools"] and "torch" in m["tools"]
    assert m["golden"]["file"] == "golden.npz" and set(m["golden"]["atol"]) == {"fp32", "int8-cpu"}
    assert m["source"]["data"] and m["validation"]["simplified"]["ok"]
    with np.load(pkg.path / "golden.npz") as z:
        assert z["input_u8"].shape == (1, TILE, TILE, 3) and z["input_u8"].dtype == np.uint8
        assert {"fake_logit__fp32", "mask_logits__fp32", "fake_logit__int8-cpu", "mask_logits__int8-cpu"} <= set(z.files)


def test_verify_passes(built):
    rep = verify_package(built[0].path)
    assert rep.ok, rep.problems
    assert "model_fp32.onnx" in rep.checked and "golden.npz" in rep.checked


@pytest.mark.parametrize("victim", ["model_fp32.onnx", "model_int8_cpu.onnx"])
def test_one_flipped_byte_fails_and_names_the_file(built, tmp_path, victim):
    dst = _copy(built[0], tmp_path)
    data = bytearray((dst / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (dst / victim).write_bytes(bytes(data))
    rep = verify_package(dst)
    assert not rep.ok and victim in rep.failing_files
    assert any(p.file == victim and "sha256" in p.message for p in rep.problems)
    with pytest.raises(ArtifactError, match=victim):
        verify_hashes(dst)


def test_cli_verify_exit_codes(built, tmp_path, capsys):
    assert main(["package", "verify", str(built[0].path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    dst = _copy(built[0], tmp_path)
    (dst / "model_fp32.onnx").unlink()
    assert main(["package", "verify", str(dst)]) == 1
    out = capsys.readouterr().out
    assert "failing files: model_fp32.onnx" in out and "missing" in out


def test_golden_drift_is_caught(built, tmp_path):
    dst = _copy(built[0], tmp_path)
    with np.load(dst / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mask_logits__int8-cpu"] = arrays["mask_logits__int8-cpu"] + 1.0
    np.savez(dst / "golden.npz", **arrays)
    m = read_json(dst / "manifest.json")
    m["golden"]["sha256"] = sha256_file(dst / "golden.npz")  # so only the re-run can notice
    write_json(dst / "manifest.json", m)
    rep = verify_package(dst)
    assert [p.file for p in rep.problems] == ["model_int8_cpu.onnx"]
    assert "golden mask_logits" in rep.problems[0].message


def test_io_mismatch_and_bad_thresholds_and_engine_metadata(built, tmp_path):
    dst = _copy(built[0], tmp_path)
    m = read_json(dst / "manifest.json")
    m["outputs"][1]["shape"] = [-1, 1, 8, 8]
    m["thresholds"]["band"] = [0.7, 0.9]  # does not contain the threshold 0.62
    (dst / "engines").mkdir()
    (dst / "engines" / "x.engine").write_bytes(b"engine")
    m["files"].append({"path": "engines/x.engine", "sha256": "0" * 64, "bytes": 6, "precision": "int8",
                       "format": "tensorrt"})
    write_json(dst / "manifest.json", m)
    rep = verify_package(dst, golden=False)
    files = rep.failing_files
    assert "model_fp32.onnx" in files and "model_int8_cpu.onnx" in files  # shapes vs manifest
    assert any("thresholds" in p.message and "band" in p.message for p in rep.problems)
    eng = [p.message for p in rep.problems if p.file == "engines/x.engine"]
    assert any("metadata" in s for s in eng) and any("sha256" in s for s in eng)


def test_check_thresholds_rules():
    assert check_thresholds(THRESHOLDS) == []
    assert check_thresholds({"temperature": 0, "threshold": 1.0, "band": [0.2]})  # three faults
    assert len(check_thresholds({"temperature": -1, "threshold": 1.5, "band": [0.9, 0.1]})) == 3
    assert check_thresholds(None)


def test_not_a_package(tmp_path):
    rep = verify_package(tmp_path)
    assert not rep.ok and rep.failing_files == ["manifest.json"]


def test_existing_out_needs_force_and_failed_export_leaves_nothing(built, tmp_path):
    pkg, root, model, cfg = built
    with pytest.raises(ArtifactError, match="--force"):
        write_package(model, cfg, pkg.path)
    bad_q = tmp_path / "q"
    bad_q.mkdir()
    (bad_q / "model.onnx").write_bytes(b"x")
    write_json(bad_q / "manifest.json", {"precision": "int4"})
    out = tmp_path / "never"
    with pytest.raises(ArtifactError, match="precision 'int4'"):
        write_package(model, cfg, out, quantized=[bad_q])
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_quantized_from_another_student_is_refused(built, tmp_path):
    pkg, root, model, cfg = built
    q = tmp_path / "q"
    shutil.copytree(root / "q-int8-cpu", q)
    qm = read_json(q / "manifest.json")
    qm["source_model"]["sha256"] = "ab" * 32
    write_json(q / "manifest.json", qm)
    with pytest.raises(ArtifactError, match="quantized from another student"):
        write_package(model, cfg, tmp_path / "out", model_dir=root / "student", quantized=[q])


def test_export_cli_through_export_package(built, tmp_path, capsys):
    pytest.importorskip("defaker_edge.student")
    _, root, _, _ = built
    rc = main(["export", "--model", str(root / "student"), "--quantized", str(root / "q-int8-cpu"),
               "--out", str(tmp_path / "p2"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {f["precision"] for f in out["files"]} == {"fp32", "int8-cpu"} and out["model_id"].startswith("compact-s-")
    assert out["validation"]["simplified"]["ok"] and verify_package(out["package"]).ok


def test_manifest_module_is_torch_and_onnx_free():
    code = ("import sys, defaker_edge.export.manifest, defaker_edge.export.golden; "
            "bad = [m for m in ('torch', 'onnx', 'onnxslim') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("files"), lambda m: m.update(files="x"), lambda m: m.update(input=[]),
    lambda m: m.update(outputs=[{"shape": [1]}]), lambda m: m["files"].append(7),
    lambda m: m["files"][0].pop("precision"), lambda m: m.update(golden=None), lambda m: m.update(thresholds=[]),
    lambda m: m.update(schema_version=99), lambda m: m["files"][0].update(path="../../etc/passwd"),
])
def test_malformed_manifests_are_reported_not_raised(built, tmp_path, mutate):
    dst = _copy(built[0], tmp_path)
    m = read_json(dst / "manifest.json")
    mutate(m)
    write_json(dst / "manifest.json", m)
    rep = verify_package(dst, golden=False)
    assert not rep.ok and rep.problems


def test_package_and_artifacts_get_the_umask_modes(built, tmp_path):
    """mkdtemp/mkstemp make 0700/0600 files: another user (a server's) could not read the package."""
    import stat

    from defaker_edge.artifacts import umask

    um = umask()
    pkg = built[0].path
    assert stat.S_IMODE(pkg.stat().st_mode) == 0o777 & ~um
    for f in pkg.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~um, f
    write_json(tmp_path / "r.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o666 & ~um
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_manifest_records_each_files_gate(built):
    m = read_json(built[0].path / "manifest.json")
    by_p = {f["precision"]: f for f in m["files"]}
    assert "gate" not in by_p["fp32"]
    g = by_p["int8-cpu"]["gate"]
    assert g["passed"] is True and g["forced"] is False and g["deltas"] == {"image_auc": -0.01, "pixel_f1": -0.01}
    assert by_p["int8-cpu"]["role"] == "accelerated"


def test_role_follows_the_gate():
    from defaker_edge.export.package import gate_record, role_of

    failed = gate_record({"deltas": {"image_auc": 0.1}, "gate": {"passed": False, "forced": True, "budget": {}}})
    assert failed["forced"] and role_of("fp8", failed) == "forced"
    assert role_of("int8", gate_record({"gate": {"passed": None}})) == "ungated"
    assert role_of("int8", gate_record({"gate": {"passed": True}})) == "accelerated"
    assert role_of("fp32", None) == "fallback"
