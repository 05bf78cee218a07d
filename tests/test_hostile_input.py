"""Hostile files (issue #19): bounded work per image, errors that name the file, no lost batch."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import defaker_edge.data.io as dio
from defaker_edge.data.io import load_image
from defaker_edge.errors import ImageError

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import tiny_package  # noqa: E402


def _jpeg(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def many_scans(n: int, size: int = 256) -> bytes:
    """A progressive JPEG whose smallest (nearly empty) scan is repeated n times before EOI."""
    d = _jpeg(np.full((size, size, 3), 128, np.uint8), progressive=True, quality=50)
    starts = [m.start() for m in re.finditer(rb"\xff\xda", d)] + [len(d) - 2]
    scan = min((d[a:b] for a, b in zip(starts, starts[1:])), key=len)
    return d[:-2] + scan * n + b"\xff\xd9"


def short_sof(w: int = 10_000, h: int = 10_000) -> bytes:
    """A valid small JPEG whose SOF claims w x h: far too few bytes for those pixels."""
    d = bytearray(_jpeg(np.full((16, 16, 3), 9, np.uint8)))
    i = d.find(b"\xff\xc0")
    d[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(d)


HOSTILE = {"many_scans": lambda: many_scans(20_000), "short_sof": short_sof}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_jpegs_are_refused_before_decoding(kind):
    data = HOSTILE[kind]()
    with pytest.raises(ImageError, match="more than 100 scans" if kind == "many_scans" else "truncated: .* bytes cannot"):
        load_image(data)


def test_decode_deadline_stops_a_slow_file(monkeypatch):
    # with the scan check out of the way, the wall-clock limit is what stops the file
    monkeypatch.setattr(dio, "MAX_JPEG_SCANS", 10**9)
    data = many_scans(3000, size=2000)
    with pytest.raises(ImageError, match="decoding took longer than 0.2 s"):
        load_image(data, decode_timeout=0.2)


def test_dataset_files_have_no_decode_deadline(monkeypatch, tmp_path):
    # a process paused mid-decode (SIGSTOP, a suspended laptop) looks like a slow file to the clock:
    # the runtime's load refuses it, a dataset read for training or evaluation does not
    clock = iter(range(0, 10**6, 100))
    monkeypatch.setattr(dio.time, "monotonic", lambda: float(next(clock)))
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="decoding took longer"):
        load_image(path)
    assert dio.load_dataset_image(path).shape == (256, 256, 3)


def test_ordinary_progressive_and_big_jpegs_still_decode():
    a = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    assert load_image(_jpeg(a, progressive=True, quality=90)).shape == (600, 800, 3)
    assert load_image(_jpeg(np.zeros((1024, 4096, 3), np.uint8), optimize=True)).shape == (1024, 4096, 3)


def test_junk_after_a_jpeg_header_is_refused_from_the_header(tmp_path):
    head = _jpeg(np.zeros((16, 16, 3), np.uint8))
    sof_only = head[:head.find(b"\xff\xda")]  # markers up to the scan, then nothing but zeros
    for name, start in (("noscan.jpg", sof_only), ("padded.jpg", head[:-2])):
        p = tmp_path / name
        with open(p, "wb") as f:
            f.write(start)
            f.truncate(200 << 20)  # sparse: 200 MB of zeros that must not be read
        with pytest.raises(ImageError, match=f"{name}: .*(no marker|padding)"):
            load_image(p)


def test_non_image_is_refused_from_its_first_bytes(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    with open(p, "wb") as f:
        f.write(b"this is not an image")
        f.truncate(100 << 20)
    reads = []
    real_open = open

    def spy(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        orig = f.read
        f.read = lambda n=-1: reads.append(n) or orig(n)
        return f

    monkeypatch.setattr(dio, "open", spy, raising=False)
    with pytest.raises(ImageError, match="big.png: not a supported image"):
        load_image(p)
    assert reads == [dio.HEAD_BYTES]


def test_os_error_on_read_is_an_image_error(tmp_path, monkeypatch):
    p = tmp_path / "locked.jpg"
    p.write_bytes(_jpeg(np.zeros((8, 8, 3), np.uint8)))

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dio, "open", denied, raising=False)
    with pytest.raises(ImageError, match="locked.jpg: cannot read the file .*Permission denied"):
        load_image(p)


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return tiny_package(tmp_path_factory.mktemp("hostile") / "pkg")


def test_failed_inputs_do_not_keep_their_bytes(pkg):
    from defaker_edge.runtime import Detector

    det = Detector.load(pkg, mask="none")
    try:
        good = io.BytesIO()
        Image.new("RGB", (64, 64)).save(good, format="PNG")
        out = list(det.check_many([good.getvalue()] + [b"\x89PNG\r\n\x1a\n" + bytes(1 << 20)] * 3, errors="yield"))
        errs = out[1:]
        assert all(isinstance(e, ImageError) for e in errs)
        # no traceback frames or chained exceptions hold the failed input
        assert all(e.__traceback__ is None and e.__context__ is None for e in errs)
        with pytest.raises(ImageError) as ei:
            det.check(HOSTILE["short_sof"](), name="s.jpg")
        assert ei.value.__context__ is None and "s.jpg" in str(ei.value)
    finally:
        det.close()


def _photos(d: Path) -> Path:
    photos = d / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for n in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(photos / n)
    return photos


def _lines(out: str) -> dict:
    return {Path(x["image"]).name: x for x in map(json.loads, out.splitlines())}


def test_check_goes_on_past_an_unreadable_file(pkg, tmp_path, monkeypatch, capsys):
    """The read of b.png fails with PermissionError (as a chmod 000 file does for a non-root user):
    b.png gets its error line, a.png and c.png their verdicts."""
    from defaker_edge.cli import main

    photos = _photos(tmp_path)
    real_open = open

    def guarded(path, *a, **kw):
        if Path(path).name == "b.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(dio, "open", guarded, raising=False)
    rc = main(["check", str(photos), "--package", str(pkg), "--json"])
    by = _lines(capsys.readouterr().out)
    assert set(by) == {"a.png", "b.png", "c.png"}
    assert "b.png" in by["b.png"]["error"] or "Permission denied" in by["b.png"]["error"]
    assert "fake_prob" in by["a.png"] and "fake_prob" in by["c.png"]
    assert rc != 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; the monkeypatched test covers it")
def test_check_goes_on_past_a_chmod_000_file(pkg, tmp_path):
    photos = _photos(tmp_path)
    os.chmod(photos / "b.png", 0)
    r = subprocess.run([sys.executable, "-m", "defaker_edge", "check", str(photos), "--package", str(pkg), "--json"],
                       capture_output=True, text=True, timeout=120)
    by = _lines(r.stdout)
    assert "Permission denied" in by["b.png"]["error"] and "fake_prob" in by["a.png"] and "fake_prob" in by["c.png"]
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_cli_gives_error_lines_for_hostile_jpegs_within_the_limit(pkg, tmp_path):
    for kind, make in HOSTILE.items():
        (tmp_path / f"{kind}.jpg").write_bytes(make())
    Image.new("RGB", (80, 80), (10, 200, 30)).save(tmp_path / "ok.png")
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "defaker_edge", "check", str(tmp_path), "--package", str(pkg),
                        "--json", "--decode-timeout", "2"], capture_output=True, text=True, timeout=120)
    by = {Path(x["image"]).name: x for x in map(json.loads, r.stdout.splitlines())}
    assert "scans" in by["many_scans.jpg"]["error"] and "truncated" in by["short_sof.jpg"]["error"]
    assert "fake_prob" in by["ok.png"]
    assert time.monotonic() - t < 60  # a loose bound (process start + model load); the files cost ~0 s


# ---- issue #24: padding after the last scan, and unreadable folders ----

def _scan_header(a: np.ndarray) -> bytes:
    """A JPEG's bytes up to and including its SOS header: what comes next is entropy-coded data."""
    d = _jpeg(a, quality=90)
    sos = d.find(b"\xff\xda")
    return d[:sos + 2 + struct.unpack(">H", d[sos + 2:sos + 4])[0]]


@pytest.mark.parametrize("side,mb", [(256, 1), (1024, 2), (1024, 8), (2048, 5)])
def test_a_jpeg_header_followed_by_zeros_is_refused(side, mb):
    a = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    data = _scan_header(a) + bytes(mb << 20)
    t = time.perf_counter()
    with pytest.raises(ImageError, match="run of more than .* zero bytes: refused as padding"):
        load_image(data)
    assert time.perf_counter() - t < 0.5  # refused by the marker walk, not by decoding


def test_zeros_before_eoi_and_junk_after_it_are_refused():
    good = _jpeg(np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="zero bytes: refused as padding"):
        load_image(good[:-2] + bytes(3 << 20) + b"\xff\xd9")
    junk = np.random.default_rng(2).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match=r"\d+ bytes after the JPEG's end-of-image marker: refused as junk"):
        load_image(good + junk)
    with pytest.raises(ImageError, match="after the JPEG's end-of-image marker: refused as padding"):
        load_image(good + good + bytes(1 << 20))  # an appended JPEG does not excuse padding


def test_what_cameras_append_and_flat_images_still_decode():
    rng = np.random.default_rng(3)
    good = _jpeg(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    video = b"\0\0\0\x20ftypisom" + rng.integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()
    for data in (good + good,  # MPO frames, an Ultra HDR gain map: another JPEG after EOI
                 good + video,  # a motion photo's MP4
                 good + bytes(4000)):  # a little padding, as some cameras write
        assert load_image(data).shape == (512, 512, 3)
    # a flat image with optimized tables codes as zero bits (2 a block): not padding
    flat = _jpeg(np.zeros((4096, 4096, 3), np.uint8), optimize=True)
    assert flat.count(b"\0" * 65537) >= 0 and load_image(flat).shape == (4096, 4096, 3)


def test_unreadable_folders_get_their_own_error_lines(pkg, tmp_path, monkeypatch, capsys):
    """A folder given as an argument, named in an @list, or met under --recursive that cannot be
    listed (PermissionError, as for a non-root user) is one error line; the rest are checked, exit 3."""
    from defaker_edge.cli import main

    photos = _photos(tmp_path)
    for name in ("locked", "listed_locked", "sub/locked_below"):
        (photos / name).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(photos / name / "x.png")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{photos / 'listed_locked'}\n{photos / 'a.png'}\n")
    real = os.scandir

    def scandir(path="."):
        if Path(path).name.endswith("locked") or Path(path).name == "locked_below":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rc = main(["check", str(photos / "locked"), f"@{lst}", str(photos / "sub"), str(photos / "b.png"),
               "--package", str(pkg), "--json", "--recursive"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    errs = {Path(x["image"]).name: x["error"] for x in lines if "error" in x}
    assert set(errs) == {"locked", "listed_locked", "locked_below"}
    assert all("cannot read the folder" in e and "Permission denied" in e for e in errs.values())
    assert sorted(Path(x["image"]).name for x in lines if "fake_prob" in x) == ["a.png", "b.png"]
    assert rc == 3


def _as_nobody() -> list[str] | None:
    """The command prefix that runs a child as an unprivileged user, or None."""
    if os.geteuid() != 0:
        return []
    import shutil

    if not shutil.which("setpriv"):
        return None
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                        "import defaker_edge.runtime"], capture_output=True, cwd=Path(__file__).parents[1])
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if r.returncode == 0 else None


def test_unreadable_inputs_as_a_non_root_user(pkg, tmp_path_factory):
    """The real thing: chmod 000 folders and files, checked by a user they deny (root reads them)."""
    import shutil
    import tempfile

    prefix = _as_nobody()
    if prefix is None:
        pytest.skip("no way to run as a non-root user here (setpriv as root)")
    root = Path(tempfile.mkdtemp(prefix="defaker-nobody-"))
    try:
        os.chmod(root, 0o755)
        shutil.copytree(pkg, root / "pkg")
        os.chmod(root / "pkg", 0o755)
        photos = root / "photos"
        photos.mkdir()
        rng = np.random.default_rng(0)
        for rel in ("a.png", "b.png", "sub/c.png", "locked/d.png", "sub/locked_below/e.png"):
            (photos / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(photos / rel)
        (root / "list.txt").write_text(f"{photos / 'locked'}\n{photos / 'a.png'}\n")
        (root / "locked_list.txt").write_text(f"{photos / 'a.png'}\n")
        for p in (photos / "b.png", photos / "locked", photos / "sub" / "locked_below", root / "locked_list.txt"):
            os.chmod(p, 0)
        r = subprocess.run([*prefix, sys.executable, "-m", "defaker_edge", "check", str(photos), f"@{root / 'list.txt'}",
                            f"@{root / 'locked_list.txt'}", "--recursive", "--package", str(root / "pkg"), "--json"],
                           capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        errs = {Path(x["image"]).name: x["error"] for x in lines if "error" in x}
        ok = sorted(Path(x["image"]).name for x in lines if "fake_prob" in x)
        assert set(errs) == {"b.png", "locked", "locked_below", "locked_list.txt"}, r.stdout + r.stderr
        assert all("Permission denied" in e for e in errs.values())
        assert ok == ["a.png", "a.png", "c.png"]  # a.png twice: from the folder and from the list
        assert r.returncode == 3 and "Traceback" not in r.stderr
    finally:
        for dirpath, dirs, files in os.walk(root):
            for n in dirs + files:
                os.chmod(os.path.join(dirpath, n), 0o700)
        shutil.rmtree(root, ignore_errors=True)


def test_a_package_under_an_unenterable_folder_is_one_line(pkg, tmp_path, monkeypatch, capsys):
    """--package PATH whose stat fails (PermissionError under a folder the user cannot enter) is one
    error line and exit 2, not a traceback."""
    from defaker_edge.cli import main

    real = Path.stat

    def stat(self, *a, **k):
        if "locked" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "stat", stat)
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 40)).save(img)
    rc = main(["check", str(img), "--package", str(tmp_path / "locked" / "pkg")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot read the package" in err and "Traceback" not in err
