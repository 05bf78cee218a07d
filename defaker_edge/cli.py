"""The one `defaker` command.

Each stage registers its own subcommands from `<stage>/cli.py`. Those modules import only the
standard library at module level, so `defaker --help` is instant and the runtime commands work on
a device that has no torch. Errors a user can fix (DefakerError) print one line and exit 2; so
does a command run on an install that lacks the extra it needs (a runtime-only `pip install .`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import DefakerError

# (module, the top-level commands it adds). Order is the order `defaker --help` lists them:
# the pipeline's order.
STAGES = [
    ("defaker_edge.data.cli", ("data",)),
    ("defaker_edge.eval_cli", ("eval",)),
    ("defaker_edge.teacher.cli", ("teacher",)),
    ("defaker_edge.distill.cli", ("distill", "prune")),
    ("defaker_edge.distill.program_cli", ("train",)),
    ("defaker_edge.calibration.cli", ("calibrate",)),
    ("defaker_edge.quantize.cli", ("quantize",)),
    ("defaker_edge.export.cli", ("export", "package", "engine")),
    ("defaker_edge.runtime.cli", ("check", "serve")),
    ("defaker_edge.bulk.cli", ("bulk",)),
    ("defaker_edge.bench.cli", ("bench",)),
]

# Top-level modules of the optional extras (pyproject.toml). A stage that needs one imports it
# inside its handler; a runtime-only install then gets one line naming the extra, not a traceback.
BUILD_MODULES = {"torch", "torchvision", "transformers", "peft", "modelopt", "onnx", "onnxslim", "onnxscript",
                 "onnx_graphsurgeon", "polygraphy", "onnxconverter_common", "safetensors", "cv2", "skimage",
                 "matplotlib", "sklearn", "scipy", "requests"}
GPU_MODULES = {"tensorrt", "cuda"}
BULK_MODULES = {"ray", "pyarrow"}
GROUPS = {"data", "teacher", "calibrate", "package", "engine", "train"}  # commands with sub-commands

EPILOG = """\
The pipeline, stage by stage (each reads an artifact directory and writes one):
  defaker data synth --out data/train --n 2000 --seed 0        synthetic forgeries (4 domains)
  defaker teacher train --preset reference --data data/train/manifest.jsonl --out T
  defaker distill --teacher T --data M --student compact --out S
  defaker prune --student S --data M --ratio 0.5 --out P
  defaker calibrate build --data M --out C
  defaker quantize --model P --calib C --precision int8 --out Q
  defaker export --model P --quantized Q --out PKG
  defaker check photo.jpg --package PKG --json                    what a device runs
  defaker bulk photos/ s3://bucket/imgs/ --out results/           many images on Ray Data (bulk extra)
  defaker bench --package PKG --data M --out R

`make default-model` runs all of it; `defaker check IMG` uses the shipped default package.
Run `defaker <command> --help` for each command's options.

Exit status:
  0  done (for check: every image was read and judged)
  1  check --fail-on-fake: at least one image was judged fake
  2  usage error, missing/invalid package or artifact, or a command needing an extra not installed
  3  check, bulk: some inputs (files, folders, list files) could not be read (each has its own
     error line or row; the others were checked); wins over 1
"""


def _modules_for(argv: list[str] | None) -> list[str]:
    """Only the stage that owns the command is imported, so `defaker check` on a device never
    touches a build stage (whose package may import torch). Help and unknown commands load all."""
    first = next((a for a in (argv or []) if not a.startswith("-")), None)
    for module, commands in STAGES:
        if first in commands:
            return [module]
    return [module for module, _ in STAGES]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defaker",
        description="DeFakerOne-Edge: detect and localize image manipulation on devices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"defaker-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _modules_for(argv):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # a stage not built yet, or an install without it
            if e.name and e.name.startswith("defaker_edge"):
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr if args.command else sys.stdout)
        return 0 if not args.command else 2
    try:
        rc = args.func(args)
    except DefakerError as e:
        print(f"defaker: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root not in BUILD_MODULES | GPU_MODULES | BULK_MODULES:
            raise
        words = [a for a in argv if not a.startswith("-")][:2]
        name = " ".join(words if words[0] in GROUPS else words[:1])
        extra = ('build extra: pip install ".[build]"' if root in BUILD_MODULES
                 else "bulk extra: pip install '.[bulk]'" if root in BULK_MODULES
                 else 'gpu extra: pip install ".[gpu]" --extra-index-url https://pypi.nvidia.com')
        print(f"defaker {name} needs the {extra} (no module named {root!r})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("defaker: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
