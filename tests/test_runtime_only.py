"""The runtime-only install (`pip install .`, no torch): every command answers without a traceback.

The suite runs with the build extra installed, so these tests hide the extras' modules from a
child interpreter (a meta-path finder that refuses them), as on a device.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from defaker_edge.cli import BUILD_MODULES

BLOCK = f"""
import sys
class _NoExtras:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {sorted(BUILD_MODULES)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _NoExtras())
from defaker_edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def defaker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,rc", [(["--help"], 0), (["--version"], 0), ([], 0), (["no-such-command"], 2),
                                     (["check", "--help"], 0), (["distill", "--help"], 0)])
def test_help_version_and_usage_errors_without_extras(args, rc):
    r = defaker(*args)
    assert r.returncode == rc, r.stderr
    assert "Traceback" not in r.stderr
    if args == ["--version"]:
        assert r.stdout.startswith("defaker-edge ")
    if args in ([], ["--help"]):
        assert "Exit status" in r.stdout and "check" in r.stdout


@pytest.mark.parametrize("args,name", [
    (["distill", "--ground-truth-only", "--data", "M", "--out", "S"], "distill"),
    (["data", "synth", "--out", "D", "--n", "2"], "data synth"),
    (["teacher", "info"], "teacher info"),
    (["export", "--model", "S", "--out", "P"], "export"),
])
def test_build_commands_name_the_extra_in_one_line(args, name, tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'defaker {name} needs the build extra: pip install ".[build]"')
