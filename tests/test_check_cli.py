"""`defaker check` on the kind of folder a new user brings."""

from __future__ import annotations

import json
import shutil
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


def test_folder_json_masks_and_exit_3(pkg, folder, tmp_path, capsys):
    d, sizes = folder
    out = tmp_path / "masks"
    rc = main(["check", str(d), "--package", str(pkg), "--json", "--mask-dir", str(out), "--overlay"])
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert rc == 3
    assert len(lines) == 5  # one per image file, the .txt is not an image
    by = {Path(x["image"]).stem: x for x in lines}
    assert set(by) == set(sizes) | {"broken"}
    assert "error" in by["broken"] and "fake_prob" not in by["broken"]
    for stem, (h, w) in sizes.items():
        line = by[stem]
        assert 0.0 <= line["fake_prob"] <= 1.0 and line["is_fake"] == (line["fake_prob"] >= line["threshold"])
        assert {"backend", "precision", "fallback", "ms", "threshold"} <= set(line)
        m = np.asarray(Image.open(out / f"{stem}.mask.png"))
        assert m.shape == (h, w) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}  # the decision
        heat = np.asarray(Image.open(out / f"{stem}.heatmap.png"))
        assert heat.shape == (h, w) and line["heatmap"] == str(out / f"{stem}.heatmap.png")
        cut = round(line["pixel_threshold"] * 255)
        np.testing.assert_array_equal(m == 255, heat >= cut)
        assert Image.open(out / f"{stem}.overlay.jpg").size == (w, h)
        assert line["mask"] == str(out / f"{stem}.mask.png")
        assert line["package_id"] and len(line["manifest_sha256"]) == 64
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
    assert rc == 3 and all("error" in x for x in lines)
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


def _tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(q.relative_to(d)): q.read_bytes() for q in sorted(d.rglob("*")) if q.is_file()}


def test_mask_dir_equal_to_the_input_folder_never_touches_an_input(pkg, folder, tmp_path, capsys):
    d = tmp_path / "inplace"
    shutil.copytree(folder[0], d)
    before = _tree_bytes(d)
    rc = main(["check", str(d), "--package", str(pkg), "--json", "--mask-dir", str(d), "--overlay"])
    assert rc == 3  # broken.jpg
    after = _tree_bytes(d)
    assert all(after[k] == v for k, v in before.items())  # every input byte-identical
    assert {k for k in after if k not in before} == {f"{s}{x}" for s in ("small", "mid", "grey", "alpha")
                                                     for x in (".mask.png", ".heatmap.png", ".overlay.jpg")}
    capsys.readouterr()
    # a second run does not score the first run's masks, and does not replace them without --overwrite
    assert main(["check", str(d), "--package", str(pkg), "--json", "--mask-dir", str(d)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "skipped 12 file(s) named like its outputs" in err
    assert main(["check", str(d), "--package", str(pkg), "--json", "--mask-dir", str(d), "--overwrite"]) == 3
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and not any(".mask." in x["image"] or ".heatmap." in x["image"] for x in lines)
    assert all(_tree_bytes(d)[k] == v for k, v in before.items())


def test_an_output_that_would_replace_an_input_is_refused(pkg, tmp_path, capsys):
    d = tmp_path / "clash"
    d.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / "a.png")
    Image.fromarray(np.full((40, 40, 3), 9, np.uint8)).save(d / "a.mask.png")
    before = _tree_bytes(d)
    # named explicitly, a file called like a mask is an input, and a.png's mask would land on it
    rc = main(["check", str(d / "a.png"), str(d / "a.mask.png"), "--package", str(pkg), "--mask-dir", str(d),
               "--overwrite"])
    assert rc == 2 and "would replace the input" in capsys.readouterr().err
    assert _tree_bytes(d) == before


def test_exit_statuses_fail_on_fake_and_quiet(pkg, folder, capsys):
    d, _ = folder
    good = [str(d / "small.jpg"), str(d / "alpha.png")]
    assert main(["check", *good, "--package", str(pkg), "--json"]) == 0
    fakes = sum(json.loads(x)["is_fake"] for x in capsys.readouterr().out.splitlines())
    assert main(["check", *good, "--package", str(pkg), "--fail-on-fake", "--quiet"]) == (1 if fakes else 0)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert main(["check", *good, str(d / "broken.jpg"), "--package", str(pkg), "--fail-on-fake", "-q"]) == 3
    err = capsys.readouterr().err
    assert "broken.jpg: ERROR" in err and "could not be checked" not in err
    assert main(["check", *good, "--package", str(d)]) == 2  # not a package


def test_paths_from_stdin_and_a_list_file(pkg, folder, tmp_path, capsys, monkeypatch):
    import io

    d, _ = folder
    lst = tmp_path / "list.txt"
    lst.write_text(f"{d / 'small.jpg'}\n\n{d / 'grey.jpg'}\n")
    assert main(["check", f"@{lst}", "--package", str(pkg), "--json"]) == 0
    assert [json.loads(x)["image"] for x in capsys.readouterr().out.splitlines()] == [str(d / "small.jpg"),
                                                                                     str(d / "grey.jpg")]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{d / 'alpha.png'}\n"))
    assert main(["check", "-", "--package", str(pkg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == str(d / "alpha.png")
    # a list that cannot be read is one error line (exit 3); the other inputs are still checked
    assert main(["check", f"@{tmp_path / 'nope.txt'}", str(d / "small.jpg"), "--package", str(pkg), "--json"]) == 3
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert "cannot read the list file" in lines[0]["error"] and lines[1]["image"] == str(d / "small.jpg")
    assert "fake_prob" in lines[1]
