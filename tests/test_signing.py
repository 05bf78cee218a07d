"""Signed packages: one edited byte anywhere (manifest included) is refused by `package verify
--trusted-key` and by Detector.load with a trusted key; an unsigned package loads as before without one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from defaker_edge.cli import main
from defaker_edge.runtime import Detector
from defaker_edge.runtime.signing import (SIGNATURE, TRUSTED_KEY_ENV, SignatureError, generate_keypair,
                                          package_digests, sign_package, verify_signature)

sys.path.insert(0, str(Path(__file__).parent))
from runtime_helpers import tiny_package  # noqa: E402


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv(TRUSTED_KEY_ENV, raising=False)
    monkeypatch.delenv("DEFAKER_KEY_PASSWORD", raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "rel.key", d / "rel.pub")
    generate_keypair(d / "other.key", d / "other.pub")
    return d


@pytest.fixture
def signed(tmp_path, keys):
    pkg = tiny_package(tmp_path / "pkg", band=(0.45, 0.55))
    sign_package(pkg, keys / "rel.key")
    return pkg


def _edit_manifest(pkg: Path, fn) -> None:
    m = json.loads((pkg / "manifest.json").read_text())
    fn(m)
    (pkg / "manifest.json").write_text(json.dumps(m, indent=2))


def _flip(path: Path, at: int | None = None) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(b))


def _threshold(m):  # inside the band: every schema rule still holds, only the decision moves
    m["thresholds"]["threshold"] = 0.46


def _overlap(m):
    m["input"]["overlap"] = 8
    m["input"]["stride"] = m["input"]["tile"] - 8


def _signature(pkg: Path) -> None:
    env = json.loads((pkg / SIGNATURE).read_text())
    sig = bytearray(__import__("base64").b64decode(env["signatures"][0]["sig"]))
    sig[5] ^= 0x01
    env["signatures"][0]["sig"] = __import__("base64").b64encode(bytes(sig)).decode()
    (pkg / SIGNATURE).write_text(json.dumps(env))


def _rehashed_byte(pkg: Path) -> None:
    """One byte of a model file, and the manifest's sha256 made to match: `verify` without a key passes."""
    from runtime_helpers import write_manifest

    _flip(pkg / "model_int8_cpu.onnx")
    write_manifest(pkg, band=(0.45, 0.55))


TAMPER = {
    "threshold": (lambda p: _edit_manifest(p, _threshold), "manifest.json: changed since it was signed"),
    "overlap": (lambda p: _edit_manifest(p, _overlap), "manifest.json: changed since it was signed"),
    "file byte": (lambda p: _flip(p / "model_int8_cpu.onnx"), "model_int8_cpu.onnx: changed since it was signed"),
    "golden byte": (lambda p: _flip(p / "golden.npz", at=100), "golden.npz: changed since it was signed"),
    "byte + manifest rehashed": (_rehashed_byte, "manifest.json: changed since it was signed"),
    "signature": (_signature, "does not verify with the trusted key"),
    "added file": (lambda p: (p / "extra.onnx").write_bytes(b"x"), "extra.onnx: not covered by the signature"),
    "removed signature": (lambda p: (p / SIGNATURE).unlink(), "not signed"),
}


def test_signed_package_verifies_and_loads(signed, keys, capsys):
    s = verify_signature(signed, keys / "rel.pub")
    assert set(s.digests) == {"manifest.json", "model_fp32.onnx", "model_int8_cpu.onnx", "golden.npz"}
    assert s.digests == package_digests(signed)
    assert main(["package", "verify", str(signed), "--trusted-key", str(keys / "rel.pub")]) == 0
    assert "signature: verified by " + s.keyid[:16] in capsys.readouterr().out
    with Detector.load(signed, trusted_key=keys / "rel.pub") as det:
        assert det.signed_by == s.keyid and det.info()["signed_by"] == s.keyid
        assert det.check(__import__("numpy").zeros((40, 50, 3), "uint8")).fake_prob > 0


@pytest.mark.parametrize("what", list(TAMPER))
def test_every_edit_is_refused_by_verify_and_the_runtime(signed, keys, capsys, monkeypatch, what):
    tamper, expect = TAMPER[what]
    tamper(signed)
    pub = keys / "rel.pub"
    # verify --trusted-key: exit 1, the problem named
    assert main(["package", "verify", str(signed), "--trusted-key", str(pub), "--no-golden"]) == 1
    assert expect in capsys.readouterr().out
    # the runtime, by argument and by environment: one line, nothing loaded
    with pytest.raises(SignatureError, match=expect) as e:
        Detector.load(signed, trusted_key=pub)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(signed))
    monkeypatch.setenv(TRUSTED_KEY_ENV, str(pub))
    with pytest.raises(SignatureError, match=expect):
        Detector.load(signed)
    # the CLI's check: one line on stderr, exit 2, no traceback
    assert main(["check", str(signed / "golden.npz"), "--package", str(signed)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0]
    monkeypatch.delenv(TRUSTED_KEY_ENV)
    if what not in ("file byte", "golden byte"):  # not enforcing: loads as it always did (the manifest's own checks)
        Detector.load(signed).close()


def test_another_key_is_refused(signed, keys, capsys):
    with pytest.raises(SignatureError, match="signed by another key .* not the trusted key"):
        Detector.load(signed, trusted_key=keys / "other.pub")
    assert main(["package", "verify", str(signed), "--trusted-key", str(keys / "other.pub"), "--no-golden"]) == 1
    assert "signed by another key" in capsys.readouterr().out


def test_unsigned_package_loads_when_not_enforcing(tmp_path, keys):
    pkg = tiny_package(tmp_path / "pkg")
    with Detector.load(pkg) as det:
        assert det.signed_by is None
    with pytest.raises(SignatureError, match="not signed"):
        Detector.load(pkg, trusted_key=(keys / "rel.pub").read_bytes())  # PEM bytes work as well as a path


def test_keygen_cli_writes_a_private_key_only_its_owner_reads(tmp_path, capsys):
    assert main(["package", "keygen", str(tmp_path / "k")]) == 0
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    capsys.readouterr()
    assert main(["package", "keygen", str(tmp_path / "k")]) == 2  # never overwrites a key
    assert "already exists" in capsys.readouterr().err


def test_encrypted_key_needs_its_password(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEFAKER_KEY_PASSWORD", "s3cret")
    generate_keypair(tmp_path / "e.key", tmp_path / "e.pub")
    assert b"ENCRYPTED" in (tmp_path / "e.key").read_bytes()
    pkg = tiny_package(tmp_path / "pkg")
    assert main(["package", "sign", str(pkg), "--key", str(tmp_path / "e.key")]) == 0
    verify_signature(pkg, tmp_path / "e.pub")
    monkeypatch.delenv("DEFAKER_KEY_PASSWORD")
    assert main(["package", "sign", str(pkg), "--key", str(tmp_path / "e.key")]) == 2
    assert "set $DEFAKER_KEY_PASSWORD" in capsys.readouterr().err


def test_sign_refuses_a_package_that_fails_verify_and_bad_keys(tmp_path, keys, capsys):
    pkg = tiny_package(tmp_path / "pkg")
    _flip(pkg / "model_fp32.onnx")
    assert main(["package", "sign", str(pkg), "--key", str(keys / "rel.key")]) == 2
    assert "not signed, it fails verify: model_fp32.onnx" in capsys.readouterr().err
    assert not (pkg / SIGNATURE).exists()
    (tmp_path / "junk.pem").write_text("not a key")
    assert main(["package", "sign", str(pkg), "--key", str(tmp_path / "junk.pem")]) == 2
    assert "not a PEM private key" in capsys.readouterr().err
    with pytest.raises(SignatureError, match="not a PEM public key"):
        Detector.load(pkg, trusted_key=tmp_path / "junk.pem")
    with pytest.raises(SignatureError, match="cannot read the trusted public key"):
        Detector.load(pkg, trusted_key=tmp_path / "missing.pub")


def test_signature_is_a_dsse_envelope_over_an_in_toto_statement(signed):
    import base64

    env = json.loads((signed / SIGNATURE).read_text())
    assert env["payloadType"] == "application/vnd.in-toto+json" and len(env["signatures"]) == 1
    st = json.loads(base64.b64decode(env["payload"]))
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert {s["name"] for s in st["subject"]} == set(package_digests(signed))
    assert st["predicate"]["model_id"] == "tiny-test"


def test_signing_stays_out_of_a_plain_import():
    code = ("import sys, defaker_edge.runtime; from defaker_edge.runtime import Detector; "
            "sys.exit(1 if 'cryptography' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
