"""Small helpers every stage uses to write self-describing artifact directories.

An artifact is a folder with a manifest.json (or config.json for checkpoints) that says what it
is, what made it (inputs' sha256, tool versions, seed) and what was measured (DESIGN §1).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

_TOOLS = ("defaker-edge", "numpy", "pillow", "onnxruntime", "onnx", "torch", "transformers",
          "peft", "nvidia-modelopt", "onnxslim", "tensorrt")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tool_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of the tools that matter for reproducing an artifact; absent ones are omitted."""
    out = {"python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}"}
    for name in (*_TOOLS, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN/Inf become null (JSON has neither)."""
    return _clean(obj)


def _clean(obj: Any) -> Any:
    # JSON has no NaN/Inf; write them as null so every reader parses the file.
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _clean(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere it can only be read by setting it
    (briefly, which races with threads creating files, hence the /proc path first)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


def publish_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file or directory made by mkstemp/mkdtemp (0600/0700: private by design) the mode an
    ordinary open()/mkdir() would have had (0644/0755 under the usual umask): artifacts are read by
    other users and services (a package installed by root, a server running as its own user)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it gets the umask's mode and replaces
    `path` in one rename, so a reader never sees half a file. Writers must name the format
    explicitly (the temporary name ends in .tmp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename) so an interrupted run never leaves half a file."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    from .errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
