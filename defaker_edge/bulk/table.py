"""The output table: one Parquet row per image, every Verdict field, or the error.

Columns (docs/INTERFACES.md): image, error (null when judged), fake_prob, is_fake, threshold, logit,
backend, precision, provider, fallback, warning, ms, decode_ms, prep_ms, infer_ms, mask_ms,
fallback_ms, height, width, tiles, package_id, manifest_sha256, package_problems, mask, checked_at.
Parts are written atomically (a temporary name, then a rename), so resume never reads half a file.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)

PART_PREFIX = "part-"
TIMINGS = ("decode_ms", "prep_ms", "infer_ms", "mask_ms", "fallback_ms")


def schema():
    import pyarrow as pa

    s, f, i = pa.string(), pa.float64(), pa.int64()
    return pa.schema([
        ("image", s), ("error", s), ("fake_prob", f), ("is_fake", pa.bool_()), ("threshold", f), ("logit", f),
        ("backend", s), ("precision", s), ("provider", s), ("fallback", s), ("warning", s), ("ms", f),
        *[(t, f) for t in TIMINGS], ("height", i), ("width", i), ("tiles", i), ("package_id", s),
        ("manifest_sha256", s), ("package_problems", pa.list_(s)), ("mask", s),
        ("checked_at", pa.timestamp("ms", tz="UTC")),
    ])


def _now() -> datetime:
    return datetime.now(timezone.utc)


def verdict_row(image: str, v, mask: str | None) -> dict[str, Any]:
    t = v.timings
    return {"image": image, "error": None, "fake_prob": v.fake_prob, "is_fake": v.is_fake, "threshold": v.threshold,
            "logit": v.logit, "backend": v.backend, "precision": v.precision, "provider": v.provider,
            "fallback": v.fallback, "warning": v.warning, "ms": t.get("total_ms"),
            **{k: t.get(k) for k in TIMINGS}, "height": v.size[0], "width": v.size[1], "tiles": v.n_tiles,
            "package_id": v.package_id, "manifest_sha256": v.manifest_sha256,
            "package_problems": list(v.package_problems), "mask": mask, "checked_at": _now()}


def error_row(image: str, error: str) -> dict[str, Any]:
    return {"image": image, "error": error, "checked_at": _now()}


def to_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema())


def out_fs(out: str):
    """(pyarrow filesystem, path inside it) for OUT, local or a URI."""
    from pyarrow import fs as pafs

    from .sources import is_uri, local_path

    if is_uri(out):
        return pafs.FileSystem.from_uri(out)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(local_path(out))


def read_done(out: str, retry_errors: bool) -> set[str]:
    """The images OUT already has a row for (with retry_errors, only the judged ones). A part that
    cannot be read is named in a warning and ignored: its images are checked again."""
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    fsys, base = out_fs(out)
    info = fsys.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return set()
    done: set[str] = set()
    for f in fsys.get_file_info(pafs.FileSelector(base, recursive=False)):
        if not (f.base_name.startswith(PART_PREFIX) and f.base_name.endswith(".parquet")):
            continue
        try:
            t = pq.read_table(f.path, columns=["image", "error"], filesystem=fsys)
        except Exception as e:  # a foreign or damaged file: say so, redo its images
            log.warning("%s: cannot read (%s); its images are checked again", f.path, e)
            continue
        images, errs = t.column("image").to_pylist(), t.column("error").to_pylist()
        done.update(i for i, e in zip(images, errs) if not (retry_errors and e is not None))
    return done


class PartWriter:
    """Collects rows on the driver and writes OUT/part-<run>-<k>.parquet every `rows` rows or
    `seconds` seconds, whichever comes first, and at close."""

    def __init__(self, out: str, rows: int, seconds: float):
        self.fs, self.base = out_fs(out)
        self.fs.create_dir(self.base, recursive=True)
        self.run = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        self.rows, self.seconds = rows, seconds
        self.pending: list[Any] = []
        self.n_pending = 0
        self.last = time.monotonic()
        self.files: list[str] = []

    def add(self, table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.n_pending += table.num_rows
        if self.n_pending >= self.rows or (self.pending and time.monotonic() - self.last >= self.seconds):
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.last = time.monotonic()
        if not self.pending:
            return
        t = pa.concat_tables([p.cast(schema()) for p in self.pending])
        self.pending, self.n_pending = [], 0
        name = f"{PART_PREFIX}{self.run}-{len(self.files):05d}.parquet"
        final, tmp = f"{self.base}/{name}", f"{self.base}/.tmp-{name}"
        pq.write_table(t, tmp, filesystem=self.fs)
        self.fs.move(tmp, final)  # a rename on local disks; object stores have no half-written object
        self.files.append(final)

    def close(self) -> None:
        self.flush()
