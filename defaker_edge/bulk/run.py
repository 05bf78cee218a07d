"""run_bulk: list the sources, skip what OUT already has, stream the rest through an actor pool of
Detectors on Ray Data, write the rows as Parquet on the driver.

Resources. Each actor asks Ray for `cpus_per_actor` CPUs (or `gpus_per_actor` GPUs). On CPUs the
default pool is one actor per spare core (the cluster's CPUs minus one): actors that ask for every
CPU leave none for Ray Data's own tasks, and the job waits for ever without an error (seen on a
2-core machine); a pool that would do that is shrunk to fractional CPUs instead. Each actor's
Detector gets cluster CPUs / actors threads, so a 2-core machine runs one actor on both cores.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from ..errors import DefakerError, MissingDependencyError
from .config import BulkConfig, BulkResult
from .sources import is_uri, join, list_sources, local_path, mask_name
from .table import PartWriter, error_row, read_done, to_table, verdict_row

log = logging.getLogger(__name__)

EXTRA_HINT = "install the bulk extra: pip install '.[bulk]'"


def _need_ray():
    for mod, pkg in (("ray.data", "ray[data]"), ("pyarrow", "pyarrow")):
        try:
            __import__(mod)
        except ImportError:
            raise MissingDependencyError(pkg, "defaker bulk", EXTRA_HINT) from None
    import ray

    return ray


class Checker:
    """One Ray actor: a Detector loaded once, then batches of image paths -> a table of rows."""

    def __init__(self, cfg: dict[str, Any], threads: int):
        from ..runtime import Detector

        self.cfg = BulkConfig(**cfg)
        c = self.cfg
        self.mask_dir = (c.mask_dir or join(c.out, "masks")) if c.masks else None
        self.det = Detector.load(c.package, backend=c.backend, precision=c.precision, fallback=c.fallback,
                                 batch_size=c.batch_size, threads=threads, mask="full" if c.masks else "none",
                                 mask_dtype="uint8", max_pixels=c.max_pixels, decode_timeout=c.decode_timeout)
        self._fs: dict[str, Any] = {}

    def __call__(self, batch: dict[str, Any]):
        paths = [str(p) for p in batch["image"]]
        local = [p for p in paths if not is_uri(p)]
        res: dict[str, Any] = {}
        # local files go through check_many: the tiles of consecutive small images share batches
        for p, r in zip(local, self.det.check_many([local_path(p) for p in local], errors="yield")):
            res[p] = r
        for p in paths:
            if p not in res:
                res[p] = self._check_uri(p)
        rows = []
        for p in paths:
            r = res[p]
            if isinstance(r, Exception):
                rows.append(error_row(p, getattr(r, "reason", None) or str(r)))
                continue
            try:
                rows.append(verdict_row(p, r, self._write_mask(p, r)))
            except Exception as e:  # an output that cannot be written fails this row, not the job
                rows.append(error_row(p, f"mask not written ({type(e).__name__}: {e})"))
        return to_table(rows)

    def _filesystem(self, uri: str):
        """(filesystem, path) for a URI; one filesystem per scheme://host, made once (an s3 one
        looks up its bucket's region when made)."""
        from urllib.parse import urlsplit

        from pyarrow import fs as pafs

        u = urlsplit(uri)
        key = f"{u.scheme}://{u.netloc}"
        if key not in self._fs:
            self._fs[key] = pafs.FileSystem.from_uri(uri)[0]
        # object stores name a file bucket/key; the others by the URI's path
        path = uri.split("://", 1)[1] if u.scheme in ("s3", "gs", "gcs", "abfs", "abfss", "az") else u.path
        return self._fs[key], path

    def _check_uri(self, uri: str):
        from pyarrow import fs as pafs

        try:
            fsys, path = self._filesystem(uri)
            info = fsys.get_file_info(path)
            if info.type != pafs.FileType.File:
                return DefakerError("file not found" if info.type == pafs.FileType.NotFound else "not a regular file")
            if info.size > self.cfg.max_bytes:
                return DefakerError(f"file is {info.size} bytes, over the {self.cfg.max_bytes}-byte limit")
            with fsys.open_input_file(path) as f:
                data = f.read()
        except Exception as e:  # network, permissions: this row's error
            return DefakerError(f"cannot read ({type(e).__name__}: {e})")
        try:
            return self.det.check(data, name=uri)
        except DefakerError as e:
            return e

    def _write_mask(self, image: str, v) -> str | None:
        if self.mask_dir is None or v.mask is None:
            return None
        dest = join(self.mask_dir, mask_name(image))
        if is_uri(dest):
            import io

            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(v.mask, mode="L").save(buf, format="PNG")
            fsys, path = self._filesystem(dest)
            with fsys.open_output_stream(path) as f:
                f.write(buf.getvalue())
        else:
            from ..artifacts import atomic_path
            from ..data.io import save_mask_png

            with atomic_path(dest) as tmp:
                save_mask_png(tmp, v.mask)
        return dest


def _plan(cfg: BulkConfig, resources: dict[str, float]) -> tuple[int, float, float, int]:
    """(actors, num_cpus and num_gpus per actor, Detector threads per actor)."""
    cpus = float(resources.get("CPU", 1.0))
    if cfg.gpus_per_actor > 0:
        gpus = float(resources.get("GPU", 0.0))
        if gpus < cfg.gpus_per_actor:
            raise DefakerError(f"--gpus-per-actor {cfg.gpus_per_actor:g}: the Ray cluster has {gpus:g} GPU(s)")
        actors = cfg.actors or max(1, int(gpus // cfg.gpus_per_actor))
        return actors, cfg.cpus_per_actor, cfg.gpus_per_actor, cfg.threads or max(1, int(cpus // actors))
    actors = cfg.actors or max(1, int((cpus - 1) // cfg.cpus_per_actor))
    per = cfg.cpus_per_actor
    if actors * per > cpus - 0.5:  # leave Ray Data half a CPU at least, or it may wait for ever
        per = max(0.01, (cpus - 0.5) / actors)
        log.info("bulk: %d actor(s) on %g CPU(s): %.2f CPU each", actors, cpus, per)
    return actors, per, 0.0, cfg.threads or max(1, int(cpus // actors))


def _init_ray(ray, cfg: BulkConfig) -> bool:
    """Connect (cfg.address, else $RAY_ADDRESS) or start a local Ray; True if this call started it."""
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, num_cpus=None if address else cfg.num_cpus, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=True)
    return True


class _Progress:
    """A bar on a terminal; elsewhere (logs, CI) one line every 10 s and a last one."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.n, self.err = total, enabled, 0, 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="img", dynamic_ncols=True, desc="bulk")
            except ImportError:
                pass

    def update(self, n: int, errors: int) -> None:
        self.n += n
        self.err += errors
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= 10:
            self.line()

    def line(self) -> None:
        self.last = time.monotonic()
        dt = self.last - self.t0
        print(f"defaker bulk: {self.n}/{self.total} images ({self.err} errors), {self.n / dt if dt else 0:.1f} img/s",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.total:
            self.line()


def run_bulk(cfg: BulkConfig) -> BulkResult:
    """Check every image in cfg.sources that OUT has no row for; returns what this run did."""
    ray = _need_ray()
    if cfg.images_per_call < 1 or cfg.rows_per_file < 1:
        raise DefakerError("images_per_call and rows_per_file must be >= 1")
    t0 = time.monotonic()
    images, unread = list_sources(cfg.sources)
    if not images and not unread:
        raise DefakerError("no images found in the sources")
    done = read_done(cfg.out, cfg.retry_errors)
    todo = [p for p in images if p not in done]
    listing = [error_row(p, why) for p, why in unread if p not in done]
    res = BulkResult(out=cfg.out, inputs=len(images) + len(unread),
                     skipped=len(images) + len(unread) - len(todo) - len(listing), checked=0, errors=0, fakes=0)
    writer = PartWriter(cfg.out, cfg.rows_per_file, cfg.flush_s)
    prog = _Progress(len(todo) + len(listing), cfg.progress)
    if listing:
        writer.add(to_table(listing))
        prog.update(len(listing), len(listing))
        res.checked, res.errors = len(listing), len(listing)
    started = False
    try:
        if todo:
            started = _init_ray(ray, cfg)
            import ray.data

            logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset execution
            logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
            ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts images, Ray's blocks
            actors, cpus, gpus, threads = _plan(cfg, ray.cluster_resources())
            res.actors = actors
            blocks = max(1, min(math.ceil(len(todo) / cfg.images_per_call), 10_000))
            ds = ray.data.from_items([{"image": p} for p in todo], override_num_blocks=blocks)
            ds = ds.map_batches(Checker, fn_constructor_kwargs={"cfg": asdict(cfg), "threads": threads},
                                batch_size=cfg.images_per_call, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus or None)
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                errs = table.column("error").null_count
                n_err = table.num_rows - errs
                res.checked += table.num_rows
                res.errors += n_err
                res.fakes += sum(1 for x in table.column("is_fake").to_pylist() if x)
                writer.add(table)
                prog.update(table.num_rows, n_err)
    finally:
        writer.close()  # what was checked is kept, even when the job stops early
        prog.close()
        if started:
            ray.shutdown()
    res.files = writer.files
    res.seconds = time.monotonic() - t0
    res.images_per_s = res.checked / res.seconds if res.seconds else 0.0
    return res

