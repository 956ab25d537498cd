"""edge-agent: the device-side command line (daemon, checks, one-shot inference, provisioning).

Each subcommand lives in agent/commands/<name>.py and exposes `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Protocol

from agent import __version__


class SubParsers(Protocol):
    """What a command's register() uses of argparse's subparsers object (its class is private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...

COMMAND_MODULES = [
    "agent.commands.run",
    "agent.commands.check",
    "agent.commands.doctor",
    "agent.commands.infer",
    "agent.commands.provision",
]


def show_help(parser: argparse.ArgumentParser) -> Any:
    """A command's func for a group given no action: print its help, exit status 2 (usage)."""

    def run(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Run a signed detector from the fleet on a camera, on the Coral Edge TPU or the CPU, "
        "and report over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run the chosen subcommand and map its result to an exit status (shared by edge-builder)."""
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
