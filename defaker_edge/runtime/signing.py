"""Signed packages: who built the package a device loads (docs/INTERFACES.md, "Signatures").

A package's manifest holds every model file's sha256, but nothing protected the manifest itself:
an edited threshold, band, temperature, DCT setting or overlap was accepted. `sign_package` signs
the sha256 of EVERY file in the package directory (manifest.json included) with an Ed25519 key and
writes PACKAGE/signature.json; `verify_signature` re-hashes the directory and checks the signature
against a trusted public key, so one edited, added or removed byte anywhere is refused.

The file is a DSSE envelope (the "Dead Simple Signing Envelope" of in-toto and sigstore) around an
in-toto Statement v1 whose subjects are the package's files and their sha256: the same layers the
OpenSSF model-signing tool puts inside its sigstore bundle. It is not a model-signing bundle (that
tool and the 35 packages it pulls in were measured too heavy for a device: README, "Signed packages"); the
keys are plain PEM files that `openssl` and any Ed25519 library read. Ed25519 comes from the
`cryptography` package, imported only when a key is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import atomic_path, publish_mode, sha256_file
from ..errors import ArtifactError, MissingDependencyError

SIGNATURE = "signature.json"
TRUSTED_KEY_ENV = "DEFAKER_TRUSTED_KEY"  # a PEM public key: Detector.load refuses unsigned/altered packages
PASSWORD_ENV = "DEFAKER_KEY_PASSWORD"  # optional: encrypts keygen's private key, decrypts it for sign
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:defaker-edge:package-signature:v1"
MANIFEST = "manifest.json"


class SignatureError(ArtifactError):
    """A package's signature is missing, malformed, made with another key, or does not match its files."""


@dataclass
class Signed:
    """What a good signature vouches for."""

    keyid: str  # sha256 of the raw 32-byte public key, hex
    digests: dict[str, str]  # path inside the package -> sha256, every file but signature.json
    predicate: dict[str, Any] = field(default_factory=dict)


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependencyError("cryptography", "signed packages",
                                     "pip install cryptography; it is a dependency of defaker-edge") from None
    return ed25519, serialization, InvalidSignature


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed, so the type cannot be swapped."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid_of(public_key: Any) -> str:
    _, serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _password() -> bytes | None:
    pw = os.environ.get(PASSWORD_ENV)
    return pw.encode() if pw else None


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike) -> str:
    """Write a new Ed25519 key pair as PEM (private: PKCS#8, mode 0600, encrypted when
    $DEFAKER_KEY_PASSWORD is set; public: SubjectPublicKeyInfo). Refuses to replace a file. Returns its keyid."""
    ed25519, serialization, _ = _crypto()
    priv, pub = Path(private_path), Path(public_path)
    for p in (priv, pub):
        if p.exists():
            raise ArtifactError(f"{p}: already exists (a key is never overwritten; choose another name)")
    key = ed25519.Ed25519PrivateKey.generate()
    pw = _password()
    enc = serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    priv.parent.mkdir(parents=True, exist_ok=True)
    # created 0600 from the start: the private key is never readable by others, not even briefly
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return keyid_of(key.public_key())


def load_private_key(path: str | os.PathLike) -> Any:
    ed25519, serialization, _ = _crypto()
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SignatureError(f"{p}: cannot read the private key ({e.strerror or e})") from None
    try:
        key = serialization.load_pem_private_key(data, password=_password())
    except TypeError:  # encrypted and no password, or a password for a plain key
        raise SignatureError(f"{p}: the key is encrypted: set ${PASSWORD_ENV}" if not _password() else
                             f"{p}: the key is not encrypted: unset ${PASSWORD_ENV}") from None
    except ValueError as e:
        raise SignatureError(f"{p}: not a PEM private key, or a wrong ${PASSWORD_ENV} ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{p}: not an Ed25519 private key ({type(key).__name__}); "
                             "make one with `defaker package keygen`")
    return key


def load_public_key(key: str | os.PathLike | bytes) -> Any:
    """A trusted key: a PEM file's path, or the PEM text itself (bytes)."""
    ed25519, serialization, _ = _crypto()
    where = "trusted key" if isinstance(key, bytes) else str(key)
    if isinstance(key, bytes):
        data = key
    else:
        try:
            data = Path(key).read_bytes()
        except OSError as e:
            raise SignatureError(f"{where}: cannot read the trusted public key ({e.strerror or e})") from None
    try:
        pub = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise SignatureError(f"{where}: not a PEM public key ({e})") from None
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{where}: not an Ed25519 public key ({type(pub).__name__})")
    return pub


def package_digests(root: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file under the package directory (POSIX relative paths, sorted),
    except signature.json itself: what a signature covers."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == SIGNATURE or not p.is_file():
                continue
            try:
                out[rel] = sha256_file(p)
            except OSError as e:
                raise SignatureError(f"{root}: {rel}: cannot be read ({e.strerror or e})") from None
    return out


def _statement(digests: dict[str, str], manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": k, "digest": {"sha256": v}} for k, v in sorted(digests.items())],
        "predicateType": PREDICATE_TYPE,
        # for people reading the file; what is enforced is the subjects' digests
        "predicate": {"model_id": manifest.get("model_id"), "format": manifest.get("format"),
                      "manifest_sha256": digests.get(MANIFEST)},
    }


def sign_package(package: str | os.PathLike, private_key: str | os.PathLike) -> tuple[Path, str, int]:
    """Sign every file of PACKAGE; writes PACKAGE/signature.json (replacing an old one).
    Returns (signature path, keyid, number of files signed)."""
    root = Path(package)
    if not (root / MANIFEST).is_file():
        raise ArtifactError(f"{root}: not a package (no {MANIFEST})")
    key = load_private_key(private_key)
    digests = package_digests(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{root / MANIFEST}: unreadable ({e})") from None
    payload = json.dumps(_statement(digests, manifest if isinstance(manifest, dict) else {}),
                         sort_keys=True, separators=(",", ":")).encode()
    keyid = keyid_of(key.public_key())
    env = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
           "signatures": [{"keyid": keyid, "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode()}]}
    out = root / SIGNATURE
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(env, indent=2) + "\n")
    publish_mode(out)
    return out, keyid, len(digests)


def signature_problems(package: str | os.PathLike, trusted_key: Any) -> tuple[Signed | None, list[tuple[str, str]]]:
    """Check PACKAGE/signature.json against `trusted_key` (a path, PEM bytes or a loaded key) and the
    files on disk. Returns (what the signature vouches for, or None, [(file, problem), ...]): no
    problems means every file is exactly what the key's holder signed and nothing was added."""
    ed25519, _, InvalidSignature = _crypto()
    pub = trusted_key if isinstance(trusted_key, ed25519.Ed25519PublicKey) else load_public_key(trusted_key)
    want = keyid_of(pub)
    root = Path(package)
    sp = root / SIGNATURE
    if not sp.is_file():
        return None, [(SIGNATURE, "the package is not signed (no signature.json); a trusted key is set, "
                                  "so only a signed package is accepted")]
    try:
        env = json.loads(sp.read_text(encoding="utf-8"))
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [(s.get("keyid"), base64.b64decode(s["sig"], validate=True)) for s in env["signatures"]]
        ptype = env["payloadType"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, [(SIGNATURE, f"malformed ({type(e).__name__}: {e})")]
    if ptype != PAYLOAD_TYPE:
        return None, [(SIGNATURE, f"payloadType {ptype!r}, expected {PAYLOAD_TYPE!r}")]
    good = False
    for _, sig in sigs:
        try:
            pub.verify(sig, pae(ptype, payload))
            good = True
            break
        except InvalidSignature:
            continue
    if not good:
        ids = sorted({str(k) for k, _ in sigs})
        if want not in ids:
            return None, [(SIGNATURE, f"signed by another key ({', '.join(i[:16] for i in ids) or 'none'}), "
                                      f"not the trusted key {want[:16]}")]
        return None, [(SIGNATURE, f"the signature does not verify with the trusted key {want[:16]} "
                                  "(the signature or its signed file list was altered)")]
    try:
        st = json.loads(payload)
        if st.get("_type") != STATEMENT_TYPE or st.get("predicateType") != PREDICATE_TYPE:
            raise ValueError(f"not a {PREDICATE_TYPE} statement")
        signed = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return None, [(SIGNATURE, f"signed payload is malformed ({e})")]
    actual = package_digests(root)
    probs: list[tuple[str, str]] = []
    # the manifest first: an edited threshold, band or overlap is the likeliest tampering
    for name in sorted(set(signed) | set(actual), key=lambda n: (n != MANIFEST, n)):
        if name not in actual:
            probs.append((name, "signed but missing from the package"))
        elif name not in signed:
            probs.append((name, "not covered by the signature (added after signing)"))
        elif actual[name] != signed[name]:
            probs.append((name, f"changed since it was signed (sha256 {actual[name][:12]}..., "
                                f"signed {signed[name][:12]}...)"))
    return Signed(keyid=want, digests=signed, predicate=st.get("predicate") or {}), probs


def verify_signature(package: str | os.PathLike, trusted_key: Any) -> Signed:
    """signature_problems as one line: SignatureError naming the first problem (and how many more)."""
    signed, probs = signature_problems(package, trusted_key)
    if probs:
        f, why = probs[0]
        more = f" (and {len(probs) - 1} more)" if len(probs) > 1 else ""
        raise SignatureError(f"{Path(package)}: signature check failed: {f}: {why}{more}")
    assert signed is not None
    return signed


def trusted_key_from_env() -> str | None:
    """$DEFAKER_TRUSTED_KEY (a PEM public key's path), or None when unset or empty."""
    return os.environ.get(TRUSTED_KEY_ENV) or None
