"""edge-builder fleet rollback|pin|unpin|inventory|status to --node N.../--group G/--all: one MQTT v5 command
per node (builder.fleet.commands), the replies shown per node (docs/ROLLOUTS.md, "Fleet commands").

Exit 0 when every selected node replied ok, 3 otherwise (a failure, no reply, or nobody selected), 1 when
the broker cannot be reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from builder.fleet.commands import CommandOutcome

HELP = {
    "rollback": "roll the selected nodes back to their previous committed version",
    "pin": "switch the selected nodes to installed version --version and refuse announcements until unpin",
    "unpin": "accept announcements again",
    "inventory": "list the versions on each node's disk",
}


def add_selection(q: argparse.ArgumentParser, required: bool) -> None:
    """--node/--group/--all and what a command needs besides the broker URL (fleet.common adds that)."""
    sel = q.add_mutually_exclusive_group(required=required)
    sel.add_argument("--node", action="append", default=[], metavar="ID", help="a node id (repeat for more)")
    sel.add_argument("--group", metavar="G", help="every node whose retained state lists group G and is not down")
    sel.add_argument("--all", dest="everyone", action="store_true", help="every node the broker knows that is not down")
    q.add_argument("--username", help="broker user (operators use the admin listener, docs/DEPLOY.md)")
    q.add_argument("--password", default=None, help="broker password (default $EDGE_MQTT_PASSWORD)")
    q.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the replies, all nodes together (default 10)")


def register(fs: Any, common: Any) -> None:
    """The four command-only actions; `status` is fleet.py's (a table without a selection, a command with one)."""
    for name, text in HELP.items():
        q = fs.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}: an MQTT v5 command to each "
                          "selected node, the replies shown per node. Exit 0 when every node replied ok, else 3.")
        common(q)
        add_selection(q, required=True)
        q.add_argument("--version", type=int, required=name == "pin", default=None,
                       help="the installed version to pin" if name == "pin" else argparse.SUPPRESS)
        q.add_argument("--wait", type=float, default=1.0, metavar="S",
                       help="seconds to listen for retained node state before choosing --group/--all (default 1)")
        q.add_argument("--json", action="store_true", help="print the outcomes as JSON")
        q.set_defaults(func=run, fleet_action=name)


def has_selection(args: argparse.Namespace) -> bool:
    return bool(args.node or args.group is not None or args.everyone)


def run(args: argparse.Namespace) -> int:
    import os
    import time
    from dataclasses import asdict

    from agent.protocol.topics import DEFAULT_PREFIX, Topics
    from builder.fleet.commands import is_up, select_nodes, send_command
    from builder.rollout.link import LinkError, RolloutLink

    password = args.password or os.environ.get("EDGE_MQTT_PASSWORD") or None
    try:
        link = RolloutLink(args.broker, Topics(args.prefix or DEFAULT_PREFIX), ca_file=args.ca_file,
                           username=args.username, password=password).start()
    except (LinkError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if not args.node:
            time.sleep(max(0.0, args.wait))  # retained state arrives at once after subscribing
        known = link.known()
        nodes = select_nodes(known, nodes=args.node, group=args.group, everyone=args.everyone)
        down = sorted(k.node for k in known if not is_up(k) and (args.everyone or (
            k.state is not None and args.group in k.state.groups)))
        if down and not args.node:
            print(f"skipped (down): {', '.join(down)}", file=sys.stderr)
        if not nodes:
            print(f"error: no node selected on {args.broker}", file=sys.stderr)
            return 3
        outcomes = send_command(link, nodes, args.fleet_action, getattr(args, "version", None), args.timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        link.stop()
    if args.json:
        import json

        print(json.dumps([asdict(o) for o in outcomes], indent=2, default=str))
    else:
        print(format_outcomes(outcomes))
    return 0 if all(o.ok for o in outcomes) else 3


def format_outcomes(outcomes: list[CommandOutcome]) -> str:
    """One row per node: NODE, RESULT (ok | failed | no reply), seconds, what the node said."""
    width = max([4, *(len(o.node) for o in outcomes)])
    rows = [f"{'NODE':<{width}}  {'RESULT':<8}  {'TIME':>6}  DETAIL"]
    for o in outcomes:
        result = "no reply" if o.ok is None else ("ok" if o.ok else "failed")
        rows.append(f"{o.node:<{width}}  {result:<8}  {o.seconds:>5.1f}s  {detail(o)}")
    return "\n".join(rows)


def detail(o: CommandOutcome) -> str:
    """What the node said, in one line: the error first, then versions on disk or what runs."""
    r = o.result
    parts = [o.error] if o.error else []
    if "versions" in r:  # inventory
        vs = [f"v{v.get('version')}" + ("*" if v.get("current") else "") for v in r.get("versions") or []]
        parts.append(f"installed {' '.join(vs) or 'none'}")
    if "running" in r:  # status, rollback, pin, unpin
        parts.append(f"running {_model(r.get('running'))}")
    elif "current" in r:
        parts.append(f"current {_model(r.get('current'))}")
    if r:
        parts.append(f"previous {_model(r.get('previous'))}")
        parts.append(f"pinned {'v' + str(r['pinned']) if r.get('pinned') is not None else '-'}")
        if r.get("pending"):
            parts.append(f"pending v{r['pending'].get('version')} ({r['pending'].get('phase')})")
    return "; ".join(str(p) for p in parts)


def _model(m: Any) -> str:
    return f"{m.get('name')} v{m.get('version')}" if isinstance(m, dict) else "-"
