"""`defaker data photos` on a tiny .deb built here: copy bytes, verify sha256, reuse offline,
refuse the packages reserved for the external evaluation."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from defaker_edge.data import photos
from defaker_edge.data.photos import ReservedPackageError, collect, jpeg_quality, load_sources, read_photos

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")


def _jpeg(seed: int, q: int) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _deb(tmp_path, package="fakephotos", version="1:1.0-1"):
    root = tmp_path / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    files = {"/usr/share/fp/a.jpg": _jpeg(0, 90), "/usr/share/fp/b.jpg": _jpeg(1, 70)}
    for f, data in files.items():
        (root / f.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / f.lstrip("/")).write_bytes(data)
    debs = tmp_path / "debs"
    debs.mkdir()
    deb = debs / f"{package}_{version.replace(':', '%3a')}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True, capture_output=True)
    return debs, files


def _sources(tmp_path, files, package="fakephotos", version="1:1.0-1", split="heldout", corrupt=None):
    lines = []
    for f, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        if f == corrupt:
            sha = "0" * 64
        lines.append(json.dumps({"package": package, "version": version, "file": f, "license": "CC0-1.0",
                                 "sha256": sha, "split": split}))
    p = tmp_path / "sources.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@needs_dpkg
def test_collect_copies_bytes_verifies_and_reuses_offline(tmp_path, capsys):
    debs, files = _deb(tmp_path)
    src = _sources(tmp_path, files)
    out = tmp_path / "out"
    res = collect(out, sources=src, debs=debs, download=False, quiet=True)
    assert res.ok and len(res.photos) == 2 and res.extracted == ["fakephotos"]
    rows = [json.loads(x) for x in (out / "photos.jsonl").read_text().splitlines()]
    by_file = {r["file"]: r for r in rows}
    for f, data in files.items():
        r = by_file[f]
        assert (out / r["path"]).read_bytes() == data  # byte for byte, never re-encoded
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert (r["width"], r["height"], r["format"], r["split"]) == (56, 40, "JPEG", "heldout")
        assert r["version"] == "1:1.0-1" and r["license"] == "CC0-1.0" and r["exif_camera"] is None
    assert by_file["/usr/share/fp/a.jpg"]["jpeg_quality"] == 90
    assert by_file["/usr/share/fp/b.jpg"]["jpeg_quality"] == 70
    # offline: the .debs are gone and downloads are off, yet everything verifies from OUT
    shutil.rmtree(debs)
    res2 = collect(out, sources=src, debs=debs, download=False, quiet=True)
    assert res2.ok and res2.extracted == [] and len(res2.photos) == 2
    assert [p["abspath"] for p in read_photos(out, split="heldout")] == [str(out / r["path"]) for r in rows]


@needs_dpkg
def test_sha256_mismatch_and_missing_package_are_reported(tmp_path, capsys):
    debs, files = _deb(tmp_path)
    src = _sources(tmp_path, files, corrupt="/usr/share/fp/b.jpg")
    res = collect(tmp_path / "out", sources=src, debs=debs, download=False, quiet=True)
    assert not res.ok and res.bad_files == ["fakephotos /usr/share/fp/b.jpg"]
    assert [p["file"] for p in res.photos] == ["/usr/share/fp/a.jpg"]
    err = capsys.readouterr().err
    assert "/usr/share/fp/b.jpg: sha256 differs" in err
    src2 = _sources(tmp_path, files, package="nosuchpackage")
    res = collect(tmp_path / "out2", sources=src2, debs=debs, download=False, quiet=True)
    assert list(res.failed_packages) == ["nosuchpackage"] and not res.photos
    assert "could not fetch package nosuchpackage" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["plasma-workspace-wallpapers", "mate-backgrounds", "lomiri-wallpapers",
                                  "lomiri-wallpapers-focal"])
def test_reserved_packages_are_refused(tmp_path, name):
    src = _sources(tmp_path, {"/x.jpg": b"x"}, package=name)
    with pytest.raises(ReservedPackageError, match="reserved"):
        load_sources(src)
    with pytest.raises(ReservedPackageError, match=name):
        collect(tmp_path / "o", sources=photos.SOURCES, packages=[name], download=False, quiet=True)


def test_cli_refuses_reserved_package(tmp_path):
    from defaker_edge.cli import main

    assert main(["data", "photos", "--out", str(tmp_path / "o"), "--offline",
                 "--packages", "mate-backgrounds"]) == 2


def test_committed_sources_split_by_package():
    rows = load_sources()
    photos_ = [r for r in rows if r.get("kind", "photo") == "photo"]
    assert len(photos_) >= 80 and all(r["license"] for r in rows)
    train = {r["package"] for r in rows if r["split"] == "train"}
    held = {r["package"] for r in rows if r["split"] == "heldout"}
    assert not train & held
    assert {"forensics-samples-files", "digikam-data", "gimp-help-en", "stellarium-data"} <= held
    assert {"kphotoalbum", "opencv-doc", "palapeli-data"} <= train
    assert len({(r["package"], r["file"]) for r in rows}) == len(rows)


def test_jpeg_quality_matches_ijg_tables():
    for q in (55, 75, 90, 98):
        with Image.open(io.BytesIO(_jpeg(2, q))) as im:
            assert jpeg_quality(im.quantization[0]) == q
    assert jpeg_quality(None) is None
