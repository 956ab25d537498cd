"""edge-agent run: the daemon (camera → model → MQTT) until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.cli import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "run",
        help="run the agent: camera frames through the model, detections and state over MQTT",
        description="Runs until SIGTERM/SIGINT. A missing camera, broker or model is reported in the retained "
        "state and retried; the process does not exit for them. Settings come from the TOML file, then "
        "EDGE_AGENT_* environment variables (nested keys with '__', e.g. EDGE_AGENT_BROKER__URL).",
    )
    p.add_argument("--config", "-c", type=Path, default=None, help="TOML config file (see docs/agent.example.toml)")
    p.add_argument("--bundle", type=Path, default=None, help="bundle directory to run when the store has none")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load_config

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"bundle": args.bundle} if args.bundle else {}
    try:
        cfg = load_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    from agent.service.daemon import AgentService
    from agent.service.journal import setup_logging

    # under systemd: structured journal entries (NODE_ID, CODE_*, …); elsewhere stderr as above
    setup_logging(args.log_level, {"NODE_ID": cfg.node_id})
    return AgentService(cfg).run()
