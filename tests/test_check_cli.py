"""`defaker check` on the kind of folder a new user brings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defaker_edge.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import tiny_package  # noqa: E402


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    return tiny_package(tmp_path_factory.mktemp("cli") / "pkg")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("user") / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    sizes = {}

    def rgb(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    Image.fromarray(rgb(256, 300)).save(d / "small.jpg", quality=90)
    Image.fromarray(rgb(700, 533)).save(d / "mid.png")
    Image.fromarray(rng.integers(0, 256, (301, 257), dtype=np.uint8), mode="L").save(d / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (123, 456, 4), dtype=np.uint8), mode="RGBA").save(d / "alpha.png")
    good = Image.fromarray(rgb(200, 200))
    good.save(d / "broken.jpg")
    (d / "broken.jpg").write_bytes((d / "broken.jpg").read_bytes()[:300])  # truncated
    (d / "notes.txt").write_text("not an image, not listed")
    sizes = {"small": (256, 300), "mid": (700, 533), "grey": (301, 257), "alpha": (123, 456)}
    return d, sizes


def test_folder_json_masks_and_exit_2(pkg, folder, tmp_path, capsys):
    d, sizes = folder
    out = tmp_path / "masks"
    rc = main(["check", str(d), "--package", str(pkg), "--json", "--mask-dir", str(out), "--overlay"])
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert rc == 2
    assert len(lines) == 5  # one per image file, the .txt is not an image
    by = {Path(x["image"]).stem: x for x in lines}
    assert set(by) == set(sizes) | {"broken"}
    assert "error" in by["broken"] and "fake_prob" not in by["broken"]
    for stem, (h, w) in sizes.items():
        line = by[stem]
        assert 0.0 <= line["fake_prob"] <= 1.0 and line["is_fake"] == (line["fake_prob"] >= line["threshold"])
        assert {"backend", "precision", "fallback", "ms", "threshold"} <= set(line)
        m = np.asarray(Image.open(out / f"{stem}.png"))
        assert m.shape == (h, w) and m.dtype == np.uint8
        assert Image.open(out / f"{stem}_overlay.jpg").size == (w, h)
        assert line["mask"] == str(out / f"{stem}.png")
    assert "1 of 5 image(s) could not be checked" in captured.err


def test_all_good_exits_0_and_human_lines(pkg, folder, capsys):
    d, _ = folder
    rc = main(["check", str(d / "small.jpg"), str(d / "alpha.png"), "--package", str(pkg)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2
    assert out[0].startswith(f"{d / 'small.jpg'}: ") and "p=" in out[0] and "threshold" in out[0]


def test_max_pixels_and_missing_file(pkg, folder, capsys):
    d, _ = folder
    rc = main(["check", str(d / "mid.png"), str(d / "nope.jpg"), "--package", str(pkg), "--json",
               "--max-pixels", "1000"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 2 and all("error" in x for x in lines)
    assert "pixel limit" in lines[0]["error"] or "MP limit" in lines[0]["error"]
    assert lines[1]["error"] == "file not found"


def test_same_stem_gets_distinct_masks(pkg, tmp_path, capsys):
    d = tmp_path / "dup"
    d.mkdir()
    img = np.zeros((70, 80, 3), np.uint8)
    Image.fromarray(img).save(d / "a.jpg")
    Image.fromarray(img).save(d / "a.png")
    assert main(["check", str(d), "--package", str(pkg), "--json", "--mask-dir", str(tmp_path / "m")]) == 0
    masks = [json.loads(x)["mask"] for x in capsys.readouterr().out.splitlines()]
    assert len(set(masks)) == 2


def test_check_path_is_torch_free(pkg, folder):
    d, _ = folder
    code = ("import sys\nfrom defaker_edge.cli import main\n"
            f"rc = main(['check', {str(d / 'small.jpg')!r}, '--package', {str(pkg)!r}, '--json'])\n"
            "bad = [m for m in ('torch', 'transformers', 'modelopt') if m in sys.modules]\n"
            "print('LOADED', bad, file=sys.stderr)\nsys.exit(3 if bad else rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode == 3:  # name the stage whose `cli` module (or package __init__) pulls torch in
        from defaker_edge.cli import STAGES

        culprits = [m for m, _ in STAGES if subprocess.run(
            [sys.executable, "-c", f"import sys, {m}; sys.exit('torch' in sys.modules)"],
            capture_output=True).returncode == 1]
        pytest.fail(f"`defaker check` imported torch; these CLI modules import it at module level: {culprits}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["fake_prob"] >= 0


def test_help_teaches(capsys):
    for cmd, words in (("check", ("--mask-dir", "Exit status", "default: auto")),
                       ("serve", ("POST /v1/check", "413", "default: 127.0.0.1"))):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and all(w in out for w in words), out


def test_json_records_the_fallback(folder, tmp_path, capsys):
    p = tiny_package(tmp_path / "pkg")
    (p / "model_int8_cpu.onnx").unlink()
    d, _ = folder
    assert main(["check", str(d / "small.jpg"), "--package", str(p), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["precision"], line["fallback"]) == ("fp32", "int8-cpu: file missing")
    assert main(["check", str(d / "small.jpg"), "--package", str(p), "--json", "--fallback", "never"]) == 2
    assert "int8-cpu: file missing" in capsys.readouterr().err
