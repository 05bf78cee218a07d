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
