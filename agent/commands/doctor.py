"""edge-agent doctor: the one command to run when "it doesn't work" (superset of `edge-agent check`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import SubParsers

if TYPE_CHECKING:
    from agent.doctor.model import DoctorReport


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "doctor",
        help="diagnose the node: OS, runtime, libedgetpu, Edge TPUs, driver, udev, groups, camera, broker, "
        "keys, clock, disk, power",
        description="Each check prints ok, warn or fail with a one-line fix. Exit status 0 when no check "
        "failed, 1 when one did, 2 when the config is invalid. See docs/DOCTOR.md.",
    )
    p.add_argument("--config", "-c", type=Path, default=None, help="TOML config file")
    p.add_argument("--json", action="store_true", help="print one JSON report instead of lines")
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="read /sys, /dev, /etc, /var under this directory instead of / (fake trees, containers)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for the camera and broker probes (5)")
    p.add_argument("--user", default="edge-agent", help="the service account to judge permissions for")
    p.add_argument("--probe", action="store_true",
                   help="run the crash-isolated Edge TPU probe now (stop the agent first: a USB Coral opens "
                   "for one process); default: report the verdict the agent stored")
    p.add_argument("--connect", action="store_true",
                   help="connect to the broker even while the agent runs (default: report the running agent's "
                   "own connection status). Under the shipped broker config this takes over the agent's "
                   "session: the broker disconnects it and its last will fires")
    p.add_argument("--only", action="append", default=None, metavar="CHECK", help="run only this check (repeat)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import logging

    from agent.config import AgentConfig, ConfigError, load_config
    from agent.doctor.compat import live_probe, stored_verdict
    from agent.doctor.model import DoctorContext, DoctorReport
    from agent.doctor.registry import run_checks
    from agent.system.host import HostRoot

    logging.basicConfig(level=logging.CRITICAL)  # the probes' retry warnings would repeat the report
    error: str | None = None
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        error, cfg = str(exc), AgentConfig.model_construct()
    make_ctx = DoctorContext
    if args.connect:
        from agent.doctor.services import ConnectingContext

        make_ctx = ConnectingContext
        print("warning: --connect logs in with the node's credentials; under the shipped broker config "
              "(use_username_as_clientid) that takes over the running agent's session and fires its last will",
              file=sys.stderr, flush=True)
    ctx = make_ctx(cfg=cfg, host=HostRoot(args.root), config_path=args.config, config_error=error,
                   timeout=args.timeout, service_user=args.user,
                   compat_probe=live_probe if args.probe else stored_verdict)
    checks = run_checks(ctx, args.only)
    report = DoctorReport.of(checks, None if error else cfg.node_id, args.config, args.root)
    if args.json:
        print(report.model_dump_json())
    else:
        print(render(report), flush=True)
    if error:
        return 2
    return 0 if report.ok else 1


def render(report: DoctorReport) -> str:
    lines = []
    for c in report.checks:
        lines.append(f"{c.status.value:<4} {c.name}: {c.detail}")
        if c.fix:
            lines.append(f"     fix: {c.fix}")
    n = report.counts
    lines.append(f"{n['ok']} ok, {n['warn']} warn, {n['fail']} fail")
    return "\n".join(lines)
