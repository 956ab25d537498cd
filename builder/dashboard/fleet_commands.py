"""Fleet commands from the page: rollback, pin VERSION, unpin, inventory or status to chosen nodes or a group.

The sending is builder.fleet.commands' job (send_command: MQTT v5 request/response over the engine's link, all
nodes in parallel, one outcome per node, `ok` None when no reply came in time; select_nodes: a group to the
nodes up in it); this module checks the page's request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.protocol.topics import check_segment
from builder.dashboard.errors import ApiError
from builder.fleet.commands import CommandSide, FleetCommand, KnownNode, select_nodes, send_command

MAX_NODES = 1000


class CommandsError(ApiError):
    """A refused command request."""


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: FleetCommand
    nodes: list[str] | None = Field(None, max_length=MAX_NODES)
    group: str | None = None
    version: int | None = Field(None, ge=0)
    timeout: float = Field(10.0, gt=0, le=60)

    @model_validator(mode="after")
    def _one_target(self) -> CommandRequest:
        if (self.nodes is None) == (self.group is None):
            raise ValueError('give either "nodes": [...] or "group": NAME')
        if self.command == "pin" and self.version is None:
            raise ValueError('pin needs "version"')
        for name in [*(self.nodes or []), *([self.group] if self.group else [])]:
            check_segment(name, "node or group")
        return self


def resolve(req: CommandRequest, known: Iterable[KnownNode]) -> list[str]:
    """The node ids the request names: its list, or the nodes up now whose retained state lists the group."""
    if req.nodes == []:
        raise CommandsError("no node selected")
    try:
        nodes = select_nodes(known, nodes=req.nodes or (), group=req.group)
    except ValueError as exc:
        raise CommandsError(str(exc)) from None
    if not nodes:
        raise CommandsError(f"no node of group {req.group!r} is up" if req.group else "no node selected")
    return nodes


def send(side: CommandSide, req: CommandRequest, nodes: list[str]) -> list[dict[str, Any]]:
    """One outcome per node: {node, ok (None: no reply in time), result, error, seconds}."""
    version = req.version if req.command == "pin" else None
    try:
        outcomes = send_command(side, nodes, req.command, version=version, timeout=req.timeout)
    except ValueError as exc:
        raise CommandsError(str(exc)) from None
    return [asdict(o) for o in outcomes]


__all__ = ["CommandRequest", "CommandsError", "resolve", "send"]
