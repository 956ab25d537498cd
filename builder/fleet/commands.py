"""Fleet commands: one MQTT v5 command (agent.service.commands) to many nodes at once, one reply per node.

`send_command` asks every node in parallel under one overall deadline and returns one `CommandOutcome` per
node, in the order asked (ok None: no reply before the deadline). `select_nodes` turns `--node`/`--group`/
`--all` into node ids from what the broker knows. The MQTT side is anything with the `command()` call of
builder.rollout.link.FleetSide (RolloutLink, or a dashboard's link); the known nodes are anything shaped like
builder.rollout.link.NodeSeen. Both are described here as protocols because builder.fleet sits below
builder.rollout in the layering (docs/ARCHITECTURE.md). Used by `edge-builder fleet` and the dashboard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from agent.protocol.messages import CommandResponse, NodeState
from agent.protocol.topics import check_segment

FleetCommand = Literal["rollback", "pin", "unpin", "inventory", "status"]
COMMANDS: tuple[str, ...] = get_args(FleetCommand)

# A side whose command() outlives its own timeout (a wedged link) is given this much more, then reported silent.
_JOIN_GRACE_S = 1.0


class CommandSide(Protocol):
    """The one call of builder.rollout.link.FleetSide this module needs."""

    def command(self, node: str, request: dict[str, Any], timeout: float = 30.0) -> CommandResponse | None: ...


class KnownNode(Protocol):
    """What select_nodes reads of builder.rollout.link.NodeSeen."""

    @property
    def node(self) -> str: ...

    @property
    def online(self) -> bool | None: ...

    @property
    def state(self) -> NodeState | None: ...


@dataclass(frozen=True)
class CommandOutcome:
    node: str
    ok: bool | None  # None: no reply before the deadline (or the request could not be sent)
    result: dict[str, Any]
    error: str | None
    seconds: float  # from sending to the reply (or to giving up)


def request_for(command: FleetCommand, version: int | None = None) -> dict[str, Any]:
    """The CommandRequest JSON for one fleet command. `unpin` goes out as `pin` without a version: the
    wire form every agent version understands (newer agents also accept `unpin` itself)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown fleet command {command!r}: use one of {', '.join(COMMANDS)}")
    if command == "pin":
        if version is None:
            raise ValueError("pin needs a version (to unpin, use unpin)")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"pin: version must be a non-negative integer, not {version!r}")
        return {"command": "pin", "version": version}
    if version is not None:
        raise ValueError(f"{command} takes no version (only pin does)")
    return {"command": "pin"} if command == "unpin" else {"command": command}


def send_command(side: CommandSide, nodes: Sequence[str], command: FleetCommand, version: int | None = None,
                 timeout: float = 10.0) -> list[CommandOutcome]:
    """Send `command` to every node at once and collect the replies until one overall deadline.

    Raises ValueError for a bad command/version/timeout before anything is sent; a node id the topics refuse,
    or a send that fails, is that node's outcome (ok None, the error says why)."""
    request = request_for(command, version)
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    unique = list(dict.fromkeys(nodes))  # a node named twice is asked once
    start = time.monotonic()
    deadline = start + timeout
    outcomes: dict[str, CommandOutcome] = {}
    lock = threading.Lock()

    def ask(node: str) -> None:
        outcome = _ask_one(side, node, request, deadline)
        with lock:
            outcomes[node] = outcome

    threads = [threading.Thread(target=ask, args=(n,), name=f"fleet-cmd-{n}", daemon=True) for n in unique]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline + _JOIN_GRACE_S - time.monotonic()))
    with lock:
        done = dict(outcomes)
    # A thread still stuck in side.command() past the deadline: no reply, as far as the caller can know.
    late = round(time.monotonic() - start, 3)
    return [done.get(n) or CommandOutcome(n, None, {}, f"no reply within {timeout:g} s", late) for n in nodes]


def _ask_one(side: CommandSide, node: str, request: dict[str, Any], deadline: float) -> CommandOutcome:
    t0 = time.monotonic()
    budget = max(0.0, deadline - t0)
    try:
        check_segment(node, "node id")
        resp = side.command(node, dict(request), timeout=budget)
    except Exception as exc:  # noqa: BLE001 - one node's failure to send is its outcome, not everyone's
        return CommandOutcome(node, None, {}, f"not sent: {exc}", round(time.monotonic() - t0, 3))
    took = round(time.monotonic() - t0, 3)
    if resp is None:
        return CommandOutcome(node, None, {}, f"no reply within {budget:.3g} s", took)
    return CommandOutcome(node, resp.ok, dict(resp.result), resp.error, took)


def select_nodes(known: Iterable[KnownNode], *, nodes: Sequence[str] = (), group: str | None = None,
                 everyone: bool = False) -> list[str]:
    """Node ids for exactly one of: `nodes` (as given, known or not: an unknown one will show no reply),
    `group` (known nodes whose retained NodeState lists it) or `everyone` (every known node). Group and
    everyone skip nodes the broker says are down (availability `offline`, or state `stopped`): commands
    are not queued for them. Sorted by id, except explicit `nodes`, which keep their order."""
    chosen = sum((bool(nodes), group is not None, everyone))
    if chosen != 1:
        raise ValueError("select exactly one of: nodes, a group, or everyone")
    if nodes:
        return list(dict.fromkeys(check_segment(n, "node id") for n in nodes))
    if group is not None:
        check_segment(group, "group")
    out = []
    for k in known:
        if not is_up(k):
            continue
        if group is None or (k.state is not None and group in k.state.groups):
            out.append(k.node)
    return sorted(set(out))


def is_up(k: KnownNode) -> bool:
    """Not known to be down: availability not `offline`, retained state not `stopped`."""
    return k.online is not False and not (k.state is not None and k.state.status == "stopped")


__all__ = ["COMMANDS", "CommandOutcome", "CommandSide", "FleetCommand", "KnownNode", "is_up", "request_for",
           "select_nodes", "send_command"]
