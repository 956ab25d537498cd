"""Starting a rollout: which nodes the target holds right now, and the new record for them."""

from __future__ import annotations

import time
from pathlib import Path

from agent.protocol.manifest import Target
from agent.security.bundle import Bundle, BundleError
from builder.rollout.gates import Thresholds
from builder.rollout.link import NodeSeen
from builder.rollout.state import RolloutSettings, RolloutState, new_state
from builder.rollout.waves import parse_waves, plan_waves


class PlanError(Exception):
    """Nothing to roll out to, or a bad bundle."""


def target_nodes(seen: list[NodeSeen], target: Target) -> list[str]:
    """Nodes of the target the broker knows as up: retained state not `stopped`, availability not
    `offline`. A node's groups come from its retained NodeState."""
    out = []
    for s in seen:
        if s.state is None or s.online is False or s.state.status == "stopped":
            continue
        if target.matches(s.node, list(s.state.groups)):
            out.append(s.node)
    return sorted(out)


def create(settings: RolloutSettings, th: Thresholds, seen: list[NodeSeen]) -> RolloutState:
    try:
        m = Bundle.load(Path(settings.bundle), complete=True).manifest
    except BundleError as exc:
        raise PlanError(f"bundle {settings.bundle}: {exc}") from None
    target = Target.parse(settings.target)
    if target.kind == "node":
        raise PlanError("--target: a rollout targets all or group:NAME (for one node, use publish)")
    nodes = target_nodes(seen, target)
    if not nodes:
        raise PlanError(f"no node of target {target} is online on {settings.broker}")
    waves = plan_waves(parse_waves(settings.waves_spec), nodes)
    rid = f"{m.name}-v{m.version}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    return new_state(rid, m.name, m.version, settings, waves, th)


__all__ = ["PlanError", "create", "target_nodes"]
