"""Bulk checks on Ray Data: `run_bulk(BulkConfig(sources, out))` -> BulkResult.

Millions of images are a job for an existing engine, not a loop of ours: Ray Data streams the list
of images through an actor pool of Detectors (one per spare CPU core, or one per GPU) and hands the
verdicts back to the driver, which writes them as Parquet in OUT, one row per image. Needs the
optional extra: pip install ".[bulk]" (ray[data] and pyarrow, ~400 MB: never on a device).
Importing this package does not import Ray; run_bulk does.
"""

from .config import BulkConfig, BulkResult
from .run import run_bulk

__all__ = ["BulkConfig", "BulkResult", "run_bulk"]
