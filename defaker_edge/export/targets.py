"""GPU targets and the rules that decide what TensorRT may build where (pure; standard library only).

Engines are not portable across GPUs or TensorRT versions (DESIGN §7), so an engine is always
built on the device it will run on: the target names a GPU family and the detected compute
capability must belong to it. Every rule here is a pure function so the tests exercise the same
decisions a real build takes.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import DefakerError

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8", "fp8")


class BuildRefused(DefakerError):
    """This precision / DLA / target combination cannot be built here; the message says why."""


@dataclass(frozen=True)
class Target:
    name: str
    capabilities: tuple[str, ...]  # compute capabilities ("8.7") that belong to this family
    description: str


TARGETS: dict[str, Target] = {
    "orin": Target("orin", ("8.7",), "Jetson AGX/NX Orin (sm_87): INT8 + FP16, 2 DLA cores"),
    "ampere": Target("ampere", ("8.0", "8.6"), "A100 (sm_80), RTX 30 / A-series (sm_86): INT8 + FP16"),
    "ada": Target("ada", ("8.9",), "RTX 40 / L4 / L40 (sm_89): FP8 + INT8 + FP16"),
    "hopper": Target("hopper", ("9.0",), "H100 / H200 (sm_90): FP8 + INT8 + FP16"),
}
TARGET_CHOICES = (*TARGETS, "auto")


def parse_cc(cc: str | float | tuple[int, int]) -> tuple[int, int]:
    """'8.7' | 8.7 | (8, 7) -> (8, 7)."""
    if isinstance(cc, tuple):
        return int(cc[0]), int(cc[1])
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(cc))
    if not m:
        raise DefakerError(f"compute capability {cc!r} is not of the form MAJOR.MINOR (e.g. 8.7)")
    return int(m.group(1)), int(m.group(2))


def cc_str(cc: str | float | tuple[int, int]) -> str:
    major, minor = parse_cc(cc)
    return f"{major}.{minor}"


def parse_trt_version(version: str) -> tuple[int, int]:
    """'10.7.0.23' -> (10, 7)."""
    m = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if not m:
        raise DefakerError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR[...]")
    return int(m.group(1)), int(m.group(2))


def resolve_target(target: str, cc: str | None) -> tuple[str, str]:
    """(target name, compute capability) for a build; refuses a target that is not the GPU present.

    `auto` names the family of the detected GPU. A named target with a known GPU must match it,
    because TensorRT tunes the engine for the GPU it builds on: an "orin" engine built on an H100
    would be an H100 engine with a wrong label.
    """
    if target != "auto" and target not in TARGETS:
        raise BuildRefused(f"unknown target {target!r}; choose one of {', '.join(TARGET_CHOICES)}")
    if cc is None:
        if target == "auto":
            raise BuildRefused("--target auto needs a visible GPU to read its compute capability; none was found")
        # no GPU to read: trust the named target (its first capability) so plans can be made offline
        return target, TARGETS[target].capabilities[0]
    cc = cc_str(cc)
    if target == "auto":
        for t in TARGETS.values():
            if cc in t.capabilities:
                return t.name, cc
        return f"sm_{cc.replace('.', '')}", cc  # a GPU outside the named families: build for what it is
    if cc not in TARGETS[target].capabilities:
        raise BuildRefused(
            f"target {target} means compute capability {'/'.join(TARGETS[target].capabilities)}, but this GPU is "
            f"{cc}; engines only run on the GPU they were built on, so build on the target device or use --target auto")
    return target, cc


def check_precision(precision: str, cc: str) -> None:
    """FP8 needs compute capability >= 8.9 (Ada, Hopper, Blackwell); FP16 and INT8 run everywhere here."""
    if precision not in PRECISIONS:
        raise BuildRefused(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp8" and parse_cc(cc) < (8, 9):
        raise BuildRefused(
            f"FP8 needs compute capability >= 8.9 (Ada, Hopper, Blackwell); this target is {cc}: "
            "build int8 or fp16 instead")


def check_dla(dla: int | None, cc: str, trt_version: str, precision: str) -> None:
    """DLA: only Jetson Orin (sm_87), with TensorRT <= 10.7 or >= 11.4, and only FP16/INT8 (what the DLA runs)."""
    if dla is None:
        return
    if dla < 0 or dla > 1:
        raise BuildRefused(f"--dla {dla}: Orin has DLA cores 0 and 1")
    if cc_str(cc) != "8.7":
        raise BuildRefused(f"--dla needs a Jetson Orin (compute capability 8.7); this target is {cc}")
    v = parse_trt_version(trt_version)
    if (10, 7) < v < (11, 4):
        raise BuildRefused(
            f"--dla needs TensorRT <= 10.7 or >= 11.4 on Orin; this is TensorRT {trt_version}")
    if precision not in ("fp16", "int8"):
        raise BuildRefused(f"the DLA runs fp16 and int8 only, not {precision}")


def detect_compute_capability() -> str | None:
    """The first GPU's compute capability ("8.7"), or None where no GPU / driver is visible.

    cuda-python first (no subprocess), then nvidia-smi. Tests monkeypatch this function.
    """
    for modname in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            rt = importlib.import_module(modname)
        except ImportError:
            continue
        try:
            err, props = rt.cudaGetDeviceProperties(0)
            if int(err) == 0:
                return f"{props.major}.{props.minor}"
        except Exception as e:  # driver missing or no device: try the next way
            log.debug("%s: %s", modname, e)
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
            if re.fullmatch(r"\d+\.\d+", first.strip()):
                return first.strip()
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("nvidia-smi: %s", e)
    return None
