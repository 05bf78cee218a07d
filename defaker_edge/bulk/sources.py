"""Where the images are: local folders, files and lists (the same expansion as `defaker check`),
and any filesystem pyarrow reads (s3://, gs://, hdfs://...), listed on the driver."""

from __future__ import annotations

import hashlib
import os
from pathlib import PurePosixPath

from ..runtime.cli import IMAGE_EXTS, MASK_SUFFIX, _is_output_name, _listed, _why, expand_inputs


def is_uri(p: str) -> bool:
    """A path for pyarrow's filesystems (s3://...), not the local one."""
    return "://" in p and not p.startswith("file://")


def local_path(p: str) -> str:
    return p[len("file://"):] if p.startswith("file://") else p


def _list_uri(uri: str, errors: list[tuple[str, str]]) -> list[str]:
    from pyarrow import fs as pafs

    try:
        fsys, path = pafs.FileSystem.from_uri(uri)
        info = fsys.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            scheme = uri.split("://", 1)[0]
            return sorted(f"{scheme}://{f.path}" for f in fsys.get_file_info(pafs.FileSelector(path, recursive=True))
                          if f.type == pafs.FileType.File and PurePosixPath(f.path).suffix.lower() in IMAGE_EXTS
                          and not f.base_name.startswith(".") and not _is_output_name(f.base_name))
    except Exception as e:  # pyarrow raises OSError and ArrowException subclasses, by backend
        errors.append((uri, f"cannot list ({_why(e)})"))
        return []
    return [uri]  # a file (or a missing one: its row says so)


def list_sources(sources: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(images in order, without repeats; [(input, why)] for folders and lists that cannot be read).
    Folders are walked recursively; files named like outputs (*.mask.png) are left out."""
    out: list[str] = []
    errors: list[tuple[str, str]] = []
    for src in sources:
        if is_uri(src):
            out.extend(_list_uri(src, errors))
            continue
        try:
            listed = _listed(src)
        except (OSError, UnicodeDecodeError) as e:
            errors.append((src, f"cannot read the list file ({_why(e)})"))
            continue
        if listed is not None:  # a list may name URIs and folders too
            sub, errs = list_sources(listed)
            out.extend(sub)
            errors.extend(errs)
            continue
        paths, _, _, errs = expand_inputs([local_path(src)], recursive=True)
        out.extend(paths)
        errors.extend(errs)
    return list(dict.fromkeys(out)), errors


def mask_name(image: str) -> str:
    """`<stem>-<12 hex of the path's sha1>.mask.png`: unique across folders with equal file names,
    and the same on every run (resume rewrites the same file)."""
    stem = PurePosixPath(image.replace(os.sep, "/")).stem or "image"
    return f"{stem}-{hashlib.sha1(image.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}{MASK_SUFFIX}"


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if is_uri(base) else os.path.join(base, name)
