"""edge-builder: the host-side command line.

Each subcommand lives in builder/commands/<name>.py and exposes `register(subparsers)`; the module
must import nothing heavy at top level (torch/TensorFlow load inside the command), so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__
from agent.cli import dispatch

# Order is the order shown in --help.
COMMAND_MODULES = [
    "builder.commands.synth",
    "builder.commands.train",
    "builder.commands.convert",
    "builder.commands.evaluate",
    "builder.commands.inspect",
    "builder.commands.compile",
    "builder.commands.calibration",
    "builder.commands.keys",
    "builder.commands.publish",
    "builder.commands.dashboard",
    "builder.commands.fleet",
    "builder.commands.rollout",
    "builder.commands.collect",
    "builder.commands.harvest",
    "builder.commands.shadow",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-builder",
        description="Train YOLO-NAS, quantize it to INT8 TFLite for the Coral Edge TPU, sign and ship it to the fleet.",
    )
    parser.add_argument("--version", action="version", version=f"edge-builder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
