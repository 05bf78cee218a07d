"""Safe image I/O: every format and mode we promise, limits, and a 5,000-input fuzz with zero crashes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from defaker_edge.data.io import load_image, load_mask, save_mask_png
from defaker_edge.errors import ImageError


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h=24, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_roundtrip_exactly(fmt):
    a = _rgb()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = load_image(_encode(Image.fromarray(a), fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == a.shape
    np.testing.assert_array_equal(out, a)


def test_jpeg_decodes_close():
    a = np.full((32, 32, 3), 120, np.uint8)
    out = load_image(_encode(Image.fromarray(a), "JPEG", quality=95))
    assert out.shape == (32, 32, 3) and abs(int(out.mean()) - 120) <= 2


def test_exif_orientation_applied():
    a = _rgb(10, 20)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = _encode(img, "JPEG", exif=exif, quality=95)
    out = load_image(data)
    assert out.shape == (20, 10, 3)


def test_modes_convert_as_documented():
    g = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    out = load_image(_encode(Image.fromarray(g, "L"), "PNG"))
    assert np.array_equal(out[:, :, 0], g) and np.array_equal(out[:, :, 2], g)

    rgba = np.dstack([_rgb(4, 6), np.full((4, 6), 7, np.uint8)])
    out = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(out, rgba[:, :, :3])  # alpha dropped, colours kept

    la = Image.fromarray(g, "L").convert("LA")
    out = load_image(_encode(la, "PNG"))
    assert np.array_equal(out[:, :, 1], g)

    p = Image.fromarray(_rgb(4, 6)).convert("P")
    out = load_image(_encode(p, "PNG"))
    np.testing.assert_array_equal(out, np.asarray(p.convert("RGB")))

    cmyk = Image.fromarray(_rgb(4, 6)).convert("CMYK")
    out = load_image(_encode(cmyk, "JPEG", quality=95))
    assert out.shape == (4, 6, 3)

    g16 = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2700)
    out = load_image(_encode(Image.fromarray(g16), "PNG"))
    np.testing.assert_array_equal(out[:, :, 0], np.rint(g16 / 257.0).astype(np.uint8))


def test_arrays_accepted():
    assert load_image(np.zeros((5, 7), np.uint8)).shape == (5, 7, 3)
    out = load_image(np.ones((5, 7, 4), np.float32))
    assert out.dtype == np.uint8 and out.max() == 255
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))


def test_pixel_limit_is_a_clear_error(tmp_path):
    data = _encode(Image.new("L", (3000, 2000)), "PNG")
    with pytest.raises(ImageError, match="over the 5 MP limit"):
        load_image(data, max_pixels=5_000_000)


def _png_claiming(w: int, h: int) -> bytes:
    data = bytearray(_encode(Image.new("L", (8, 8)), "PNG"))
    i = data.index(b"IHDR")
    data[i + 4:i + 12] = struct.pack(">II", w, h)
    data[i + 17:i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i:i + 17])))  # keep the chunk valid
    return bytes(data)


@pytest.mark.parametrize("w,h,expect", [(12_000, 10_000, "over the 100 MP limit"),
                                        (100_000, 100_000, "decompression bomb")])
def test_png_header_claiming_huge_size_is_refused_before_decoding(w, h, expect):
    # a valid PNG header claiming a huge canvas must be refused from the header, not allocated
    with pytest.raises(ImageError, match=expect):
        load_image(_png_claiming(w, h))


def test_file_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        load_image(empty)
    with pytest.raises(ImageError, match="missing.png: file not found"):
        load_image(tmp_path / "missing.png")
    txt = tmp_path / "notes.png"
    txt.write_text("hello, not an image")
    with pytest.raises(ImageError, match="notes.png: not a supported image"):
        load_image(txt)
    trunc = tmp_path / "trunc.jpg"
    full = _encode(Image.fromarray(_rgb(64, 64)), "JPEG")
    trunc.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match="trunc.jpg: truncated"):
        load_image(trunc)


def test_masks_threshold_and_report_non_binary(tmp_path):
    m = np.zeros((6, 8), np.uint8)
    m[2:4, 2:5] = 255
    save_mask_png(tmp_path / "m.png", m)
    mask, binary = load_mask(tmp_path / "m.png", size=(6, 8))
    assert binary and mask.sum() == 6
    soft = m.copy()
    soft[0, 0] = 200
    Image.fromarray(soft).save(tmp_path / "soft.png")
    mask, binary = load_mask(tmp_path / "soft.png")
    assert not binary and mask[0, 0]
    with pytest.raises(ImageError, match="mask is 8x6 but its image is 9x6"):
        load_mask(tmp_path / "m.png", size=(6, 9))


# ---- fuzz: 5,000 malformed inputs, each must decode or raise ImageError, nothing else ----

def _seeds() -> list[bytes]:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    return [
        _encode(img, "JPEG", quality=80), _encode(img, "PNG"), _encode(img, "BMP"),
        _encode(img, "TIFF"), _encode(img, "WEBP"), _encode(img.convert("P"), "GIF"),
        _encode(img.convert("L"), "PNG"), _encode(img.convert("CMYK"), "TIFF"),
    ]


SEEDS = _seeds()
# issue #19's hostile JPEGs: a progressive file's smallest scan repeated, and SOF sizes with no data
_PROG = _encode(Image.fromarray(np.full((40, 48, 3), 99, np.uint8)), "JPEG", progressive=True)
_SCAN = min((_PROG[a:b] for a, b in zip(*(lambda s: (s, s[1:]))(
    [i for i in range(len(_PROG) - 1) if _PROG[i:i + 2] == b"\xff\xda"] + [len(_PROG) - 2]))), key=len)


@st.composite
def malformed(draw):
    base = bytearray(draw(st.sampled_from(SEEDS)))
    op = draw(st.sampled_from(["flip", "truncate", "splice", "random", "header", "scans", "sof"]))
    if op == "scans":  # many (nearly empty) progressive scans
        return _PROG[:-2] + _SCAN * draw(st.integers(1, 400)) + b"\xff\xd9"
    if op == "sof":  # a JPEG whose SOF claims a size its data cannot hold
        j = bytearray(SEEDS[0])
        i = j.find(b"\xff\xc0")
        j[i + 5:i + 9] = struct.pack(">HH", draw(st.integers(0, 20000)), draw(st.integers(0, 20000)))
        return bytes(j)
    if op == "flip":
        for _ in range(draw(st.integers(1, 16))):
            i = draw(st.integers(0, len(base) - 1))
            base[i] ^= 1 << draw(st.integers(0, 7))
    elif op == "truncate":
        base = base[: draw(st.integers(0, len(base) - 1))]
    elif op == "splice":
        i = draw(st.integers(0, len(base)))
        base[i:i] = draw(st.binary(min_size=1, max_size=64))
    elif op == "random":
        base = bytearray(draw(st.binary(min_size=0, max_size=256)))
    else:  # overwrite bytes near the header, where sizes and offsets live
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, min(63, len(base) - 1)))
            base[i] = draw(st.integers(0, 255))
    return bytes(base)


@settings(max_examples=5000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(malformed())
def test_fuzz_malformed_inputs_never_crash(data):
    try:
        out = load_image(data, max_pixels=4_000_000)
    except ImageError as e:
        assert e.path == "<bytes>" and e.reason
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
