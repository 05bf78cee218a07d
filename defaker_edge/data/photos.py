"""`defaker data photos`: real camera photographs from Debian packages, kept byte for byte.

The list of sources (package, version, file inside the package, license, sha256, split) is committed in
`photo_sources.jsonl`; the images are not. This module fetches the .debs (or reuses ones it finds),
copies each listed file out unchanged (never re-encoded: the camera's JPEG history is the point) and
writes DIR/photos.jsonl. Splits are by package, so held-out photos never share a camera, a photographer
or a scene with the training ones. Standard library and Pillow only (Pillow is imported lazily).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ..errors import DefakerError

SOURCES = Path(__file__).with_name("photo_sources.jsonl")

# Kept for the project's external evaluation: never fetched, never used for anything here.
RESERVED = ("plasma-workspace-wallpapers", "mate-backgrounds")
RESERVED_PREFIXES = ("lomiri-wallpapers",)

SPLITS = ("train", "heldout")
KINDS = ("photo", "cutout")
FIELDS = ("package", "version", "file", "license", "sha256", "split")

# IJG (libjpeg) standard luminance table, natural (row-major) order.
IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
ZIGZAG = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14,
    21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60,
    61, 54, 47, 55, 62, 63,
)


class PhotoSourceError(DefakerError):
    """The sources list is malformed or names a package that may not be used."""


class ReservedPackageError(PhotoSourceError):
    """A package reserved for the project's external evaluation was named."""


def is_reserved(package: str) -> bool:
    return package in RESERVED or any(package.startswith(p) for p in RESERVED_PREFIXES)


def refuse_reserved(packages, where: str) -> None:
    bad = sorted({p for p in packages if is_reserved(p)})
    if bad:
        raise ReservedPackageError(
            f"{where}: {', '.join(bad)} reserved for the project's external evaluation "
            f"(plasma-workspace-wallpapers, mate-backgrounds, lomiri-wallpapers*): never fetched or used")


def load_sources(path: str | os.PathLike = SOURCES) -> list[dict]:
    rows, errors = [], []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"line {n}: not JSON ({e.msg})")
            continue
        missing = [k for k in FIELDS if not row.get(k)]
        if missing:
            errors.append(f"line {n}: missing {', '.join(missing)}")
        elif row["split"] not in SPLITS:
            errors.append(f"line {n}: split {row['split']!r} is not train or heldout")
        elif row.get("kind", "photo") not in KINDS:
            errors.append(f"line {n}: kind {row['kind']!r} is not photo or cutout")
        rows.append(row)
    refuse_reserved([r.get("package", "") for r in rows], str(path))
    if errors:
        raise PhotoSourceError(f"{path}: " + "; ".join(errors))
    # A package in both splits would leak cameras and scenes into the held-out evaluation.
    splits: dict[str, set] = {}
    for r in rows:
        splits.setdefault(r["package"], set()).add(r["split"])
    mixed = sorted(p for p, s in splits.items() if len(s) > 1)
    if mixed:
        raise PhotoSourceError(f"{path}: package(s) {', '.join(mixed)} appear in both splits (split by package)")
    return rows


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def local_path(row: dict) -> str:
    """Where a source lands under DIR: files/<package>/<file inside the package, without the leading />."""
    return f"files/{row['package']}/{row['file'].lstrip('/')}"


def jpeg_quality(luma_table) -> int | None:
    """IJG quality whose scaled standard table is closest to this luma table (natural or zig-zag order)."""
    if luma_table is None or len(luma_table) != 64:
        return None
    t = list(luma_table)
    best = None
    for order in (t, [t[ZIGZAG.index(i)] for i in range(64)]):
        for q in range(1, 101):
            s = 5000 // q if q < 50 else 200 - 2 * q
            ref = [min(255, max(1, (v * s + 50) // 100)) for v in IJG_LUMA]
            err = sum(abs(a - b) for a, b in zip(order, ref))
            if best is None or err < best[0]:
                best = (err, q)
    return best[1]


def describe(path: Path) -> dict:
    """width, height, format, jpeg_quality and exif_camera, read without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        info = {"width": im.width, "height": im.height, "format": im.format, "mode": im.mode}
        q = getattr(im, "quantization", None) if im.format == "JPEG" else None
        info["jpeg_quality"] = jpeg_quality(q.get(0)) if q else None
        exif = im.getexif()
        make = str(exif.get(271) or "").strip("\x00 ").strip()
        model = str(exif.get(272) or "").strip("\x00 ").strip()
        if make and model.lower().startswith(make.split()[0].lower()):
            make = ""  # "Canon" + "Canon EOS 20D": say it once
        info["exif_camera"] = " ".join(x for x in (make, model) if x) or None
    return info


def deb_name(package: str, version: str) -> str:
    # apt writes the epoch colon as %3a in file names
    return f"{package}_{version.replace(':', '%3a')}_"


def find_deb(package: str, version: str, dirs) -> Path | None:
    for d in dirs:
        if d and Path(d).is_dir():
            for p in sorted(Path(d).glob("*.deb")):
                if unquote(p.name).startswith(f"{package}_{version}_") or p.name.startswith(deb_name(package, version)):
                    return p
    return None


def apt_download(package: str, version: str, cache: Path) -> Path:
    """`apt-get download PKG=VERSION` into cache (the version pins the sha256s in the sources list)."""
    if shutil.which("apt-get") is None:
        raise DefakerError("apt-get not found")
    cache.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=cache,
                       capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["apt-get download failed"])[-1]
        raise DefakerError(msg)
    deb = find_deb(package, version, [cache])
    if deb is None:
        raise DefakerError("apt-get download wrote no matching .deb")
    return deb


@dataclass
class CollectResult:
    out: Path
    photos: list[dict] = field(default_factory=list)
    failed_packages: dict[str, str] = field(default_factory=dict)
    bad_files: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed_packages and not self.bad_files


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def collect(out, sources=SOURCES, debs=None, cache=None, packages=None, download=True,
            quiet=False) -> CollectResult:
    """Fetch, copy and verify every source photo into OUT, then write OUT/photos.jsonl.

    A package is only opened (or downloaded) when one of its files is missing or fails its sha256,
    so an existing OUT works offline. A failure is one line per package or file, never a traceback.
    """
    out = Path(out)
    if packages:
        refuse_reserved(packages, "--packages")
    rows = load_sources(sources)
    if packages:
        unknown = sorted(set(packages) - {r["package"] for r in rows})
        if unknown:
            raise PhotoSourceError(f"--packages: {', '.join(unknown)} not in {sources}")
        rows = [r for r in rows if r["package"] in set(packages)]
    cache = Path(cache) if cache else out / "debs"
    res = CollectResult(out=out)
    by_pkg: dict[str, list[dict]] = {}
    for r in rows:
        by_pkg.setdefault(r["package"], []).append(r)

    for pkg, prows in by_pkg.items():
        need = [r for r in prows if not (out / local_path(r)).is_file()
                or sha256_of(out / local_path(r)) != r["sha256"]]
        if need:
            version = prows[0]["version"]
            deb = find_deb(pkg, version, [debs, cache])
            try:
                if deb is None:
                    if not download:
                        raise DefakerError(f"no {deb_name(pkg, version)}*.deb in --debs/cache and downloads are off")
                    _log(f"photos: apt-get download {pkg}={version}", quiet)
                    deb = apt_download(pkg, version, cache)
                    res.downloaded.append(pkg)
                _log(f"photos: extracting {len(need)} file(s) from {deb.name}", quiet)
                _extract(deb, need, out)
                res.extracted.append(pkg)
            except (DefakerError, OSError, subprocess.SubprocessError) as e:
                res.failed_packages[pkg] = str(e)
                print(f"photos: could not fetch package {pkg} {version}: {e}", file=sys.stderr)
        for r in prows:
            p = out / local_path(r)
            if pkg in res.failed_packages and not p.is_file():
                continue
            if not p.is_file():
                res.bad_files.append(f"{pkg} {r['file']}")
                print(f"photos: {pkg} {r['file']}: not in the package", file=sys.stderr)
                continue
            got = sha256_of(p)
            if got != r["sha256"]:
                res.bad_files.append(f"{pkg} {r['file']}")
                print(f"photos: {pkg} {r['file']}: sha256 differs (expected {r['sha256'][:12]}…, "
                      f"got {got[:12]}…)", file=sys.stderr)
                continue
            entry = {"path": local_path(r), "package": pkg, "version": r["version"], "file": r["file"],
                     "license": r["license"], "sha256": got, "kind": r.get("kind", "photo")}
            entry.update(describe(p))
            entry["split"] = r["split"]
            res.photos.append(entry)
        _log(f"photos: {pkg}: {sum(1 for e in res.photos if e['package'] == pkg)}/{len(prows)} verified", quiet)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "photos.jsonl.tmp"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in res.photos))
    tmp.replace(out / "photos.jsonl")
    return res


def _extract(deb: Path, rows: list[dict], out: Path) -> None:
    """dpkg-deb -x into a temporary dir, then copy the listed files' bytes (no decoding)."""
    if shutil.which("dpkg-deb") is None:
        raise DefakerError("dpkg-deb not found (Debian/Ubuntu's dpkg package)")
    with tempfile.TemporaryDirectory(prefix="defaker-deb-") as tmp:
        r = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True)
        if r.returncode != 0:
            raise DefakerError(f"dpkg-deb -x failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        for row in rows:
            src = Path(tmp) / row["file"].lstrip("/")
            if src.is_file():
                dst = out / local_path(row)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)


def read_photos(photos_dir, split: str | None = None, kind: str | None = "photo") -> list[dict]:
    """DIR/photos.jsonl rows (optionally one split/kind), each with an absolute `abspath`."""
    d = Path(photos_dir)
    f = d / "photos.jsonl"
    if not f.is_file():
        raise PhotoSourceError(f"{f}: not found (run `defaker data photos --out {d}` first)")
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    refuse_reserved([r.get("package", "") for r in rows], str(f))
    rows = [r for r in rows if (split is None or r.get("split") == split)
            and (kind is None or r.get("kind", "photo") == kind)]
    for r in rows:
        r["abspath"] = str(d / r["path"])
    return rows
