"""edge-builder fleet status|watch: the dashboard's terminal twin (same state model, read from MQTT); and the
fleet commands rollback|pin|unpin|inventory|status to selected nodes (builder.commands.fleet_commands)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import SubParsers

if TYPE_CHECKING:
    from builder.dashboard.link import FleetLink
    from builder.dashboard.state import FleetState


def register(sub: SubParsers) -> None:
    from builder.commands import fleet_commands

    p = sub.add_parser("fleet", help="fleet status table, live watch and commands to nodes in the terminal",
                       description="Read the fleet's MQTT topics and show every node (the dashboard's terminal "
                       "twin), or send nodes a command (rollback, pin, unpin, inventory, status) and show each reply.")
    fs = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--broker", required=True, help="MQTT broker URL: mqtt://host:port, mqtts://, ws://, wss://")
        q.add_argument("--prefix", default=None, help="MQTT topic prefix (default edgefleet)")
        q.add_argument("--ca-file", type=Path, default=None, help="CA certificate for a TLS broker")

    s = fs.add_parser("status", help="print one table of every node and exit (with --node/--group/--all: ask "
                      "those nodes for their update status)",
                      description="Collect retained state and one round of telemetry, print a table, exit. "
                      "Exit status 3 when any node is offline, silent or faulty. With --node/--group/--all, send "
                      "the `status` command to those nodes instead and show each reply (exit 3 unless all replied).")
    common(s)
    s.add_argument("--wait", type=float, default=2.0,
                   help="seconds to listen before printing (retained state arrives at once; telemetry needs "
                   "one interval; default 2)")
    s.add_argument("--json", action="store_true", help="print the nodes as JSON instead of a table")
    fleet_commands.add_selection(s, required=False)
    s.set_defaults(func=_status, fleet_action="status")
    fleet_commands.register(fs, common)

    w = fs.add_parser("watch", help="follow the fleet live until Ctrl-C",
                      description="On a terminal, redraw the table every --interval seconds with the latest "
                      "events below it; when piped, print one line per event (online/offline, update steps, faults).")
    common(w)
    w.add_argument("--interval", type=float, default=1.0, help="refresh period in seconds (default 1)")
    w.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: never)")
    w.set_defaults(func=_watch)


def _connect(args: argparse.Namespace) -> tuple[FleetState, FleetLink] | None:
    """The fleet's state fed from the broker, or None after printing why it could not connect."""
    from agent.protocol.topics import DEFAULT_PREFIX, Topics
    from builder.dashboard.link import FleetLink, LinkError
    from builder.dashboard.state import FleetState

    state = FleetState(Topics(args.prefix or DEFAULT_PREFIX))
    try:
        return state, FleetLink(args.broker, state, ca_file=args.ca_file).start()
    except (LinkError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    import json
    import time

    from builder.commands import fleet_commands
    from builder.dashboard.state import dumps
    from builder.dashboard.table import format_table, node_status

    if fleet_commands.has_selection(args):
        return fleet_commands.run(args)
    if args.username or args.password:
        print("error: the status table takes credentials in the broker URL (mqtt://user:pass@host); "
              "--username/--password go with --node/--group/--all", file=sys.stderr)
        return 2
    if (connected := _connect(args)) is None:
        return 1
    state, link = connected
    try:
        time.sleep(max(0.0, args.wait))
    finally:
        link.stop()
    nodes = state.nodes()
    now = time.time()
    if args.json:
        print(dumps([json.loads(n.model_dump_json()) for n in nodes]))
    else:
        print(format_table(nodes, now))
    bad = [n for n in nodes if node_status(n, now) in ("faulty", "offline", "silent")]
    return 3 if bad else 0


def _watch(args: argparse.Namespace) -> int:
    import time

    from builder.dashboard.state import NodeView
    from builder.dashboard.table import changes, format_table

    if (connected := _connect(args)) is None:
        return 1
    state, link = connected
    tty = sys.stdout.isatty()
    seen: dict[str, NodeView] = {}
    recent: list[str] = []
    deadline = None if args.duration is None else time.monotonic() + args.duration
    first = True
    try:
        while deadline is None or time.monotonic() < deadline:
            if not first:
                time.sleep(args.interval)
            first = False
            nodes = state.nodes()
            events = changes(seen, nodes)
            seen = {n.id: n for n in nodes}
            if tty:
                recent = (recent + events)[-10:]
                sys.stdout.write("\x1b[H\x1b[2J" + format_table(nodes) + "\n\n" + "\n".join(recent) + "\n")
                sys.stdout.flush()
            else:
                for line in events:
                    print(line, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        link.stop()
    return 0
