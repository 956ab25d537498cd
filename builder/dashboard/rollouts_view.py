"""A staged rollout as the page draws it: waves with their size and state, per-node progress, gate limits,
who runs it (the claim) and whether this dashboard may act on it. Pure: a RolloutState in, JSON out."""

from __future__ import annotations

from typing import Any

from builder.rollout.state import RolloutState

EVENTS_SHOWN = 12


def wave_state(st: RolloutState, i: int) -> str:
    """passed | running | paused | failed | aborted | pending (for wave `i`)."""
    if i < st.current_wave or (i == st.current_wave and st.phase == "completed"):
        return "passed"
    if i > st.current_wave:
        return "pending"
    return {"running": "running", "paused": "paused", "halted": "failed"}.get(st.phase, st.phase)


def rollout_view(st: RolloutState, runner: dict[str, Any] | None, own: str, foreign: str | None) -> dict[str, Any]:
    """`runner`: the live claim (None: nobody runs it); `own`: this dashboard's claim owner; `foreign`: why this
    dashboard cannot run it (another broker or prefix), else None."""
    nodes = sorted(st.nodes.values(), key=lambda p: (p.wave, p.node))
    ours = runner is not None and runner.get("owner") == own
    return {
        "id": st.id, "name": st.name, "version": st.version, "created": st.created, "phase": st.phase,
        "reason": st.reason, "done": st.done, "target": st.settings.target, "waves_spec": st.settings.waves_spec,
        "current_wave": st.current_wave, "rollback_on_halt": st.settings.rollback_on_halt,
        "gates": st.settings.thresholds,
        "waves": [{"index": i, "size": len(w), "nodes": w, "state": wave_state(st, i)} for i, w in enumerate(st.waves)],
        "nodes": [{"node": p.node, "wave": p.wave, "status": p.status, "reason": p.reason,
                   "previous_version": p.previous_version, "rolled_back": p.rolled_back,
                   "announced_at": p.announced_at, "committed_at": p.committed_at} for p in nodes],
        "events": st.events[-EVENTS_SHOWN:],
        "runner": None if runner is None else {**runner, "ours": ours},
        # Read-only: another live process runs it (the page still sends pause/resume/abort as requests).
        "readonly": runner is not None and not ours,
        "foreign": foreign,
    }


__all__ = ["rollout_view", "wave_state"]
