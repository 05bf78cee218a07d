"""The machine a report was measured on: numbers without it cannot be compared."""

from __future__ import annotations

import os
import platform
import subprocess


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[str]:
    """GPU names from nvidia-smi (no torch import: the bench must also run on a runtime-only install)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def load_average() -> float | None:
    """1-minute load average: other processes sharing the CPU inflate every latency measured."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity), else all of them."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def machine_info() -> dict:
    usable = len(usable_cpus())
    gpus = _gpus()
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_gb": _mem_total_gb(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "python": platform.python_version(),
        "onnxruntime_providers": ort_providers(),
        "gpu": gpus[0] if gpus else None,
        "gpus": gpus,
        "load_avg_start": load_average(),
    }


def describe(info: dict) -> str:
    """One line for tables: '2-core CPU (Intel Xeon ...)' or the GPU name."""
    cpu = f"{info.get('cpu_cores_usable') or info.get('cpu_cores')}-core CPU ({info.get('cpu_model')})"
    return f"{cpu}, GPU {info['gpu']}" if info.get("gpu") else cpu
