"""Benchmark: latency x accuracy x robustness of a package -> report.json, report.md, plots.

Entry: `run_bench(BenchConfig(package=..., data=..., out=...)) -> BenchReport`.
Schema of report.json: bench/README.md. CLI: `defaker bench --help`.

Names are loaded lazily (PEP 562): `defaker --help` imports `bench.cli`, and with it this file,
so nothing beyond the standard library may load here.
"""

from __future__ import annotations

__all__ = ["BenchConfig", "BenchReport", "SCHEMA_VERSION", "run_bench"]


def __getattr__(name: str):
    if name in ("BenchConfig", "BenchReport"):
        from . import config

        return getattr(config, name)
    if name == "SCHEMA_VERSION":
        from .report import SCHEMA_VERSION

        return SCHEMA_VERSION
    if name == "run_bench":
        from .runner import run_bench

        return run_bench
    raise AttributeError(name)
