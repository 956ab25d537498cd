"""The rollout's shadow step (`rollout start --shadow-frames N`): before a node of the current wave is
announced the version, it runs the version in shadow beside its live model on its own frames (docs/SHADOW.md)
and is announced only when its agreement passes the gate (builder.rollout.shadow_gate). A node whose run is
refused, fails, disagrees or does not report in time fails here, having downloaded nothing but the CPU model
it compared, and its wave is judged as usual (failure threshold, halt)."""

from __future__ import annotations

import uuid

from agent.protocol.shadow import ShadowRequest, ShadowSampling, ShadowState
from builder.rollout.announce import Announcer
from builder.rollout.link import FleetSide
from builder.rollout.shadow_gate import judge_shadow
from builder.rollout.state import NodeProgress, RolloutState, ShadowGateSettings, mark

DEAD = (ShadowState.REJECTED, ShadowState.FAILED, ShadowState.STOPPED)


def ask(st: RolloutState, p: NodeProgress, link: FleetSide, announcer: Announcer, base_url: str, now: float) -> None:
    """Publish the node's retained ShadowRequest (the candidate signed for it alone)."""
    gate = st.settings.shadow
    assert gate is not None
    req = ShadowRequest(request_id=f"rollout-{st.id}-{uuid.uuid4().hex[:6]}"[:64],
                        candidate=announcer.announcement(p.node, base_url),
                        sampling=ShadowSampling(every_nth=gate.every_nth, max_rate_hz=gate.max_rate_hz),
                        max_frames=gate.frames)
    link.publish(announcer.topics.shadow(p.node), req.model_dump_json().encode(), retain=True)
    p.status, p.shadow_request, p.shadow_at = "shadowing", req.request_id, now
    st.log(f"{p.node}: shadow run of v{st.version} asked ({gate.frames} frames, F1 >= {gate.min_f1:g})", now)


def judge(st: RolloutState, p: NodeProgress, link: FleetSide, gate: ShadowGateSettings, now: float) -> bool:
    """Decide a shadowing node: True when it may be announced; marks it failed when it may not; else waits."""
    seen = link.snapshot(p.node)
    report = seen.shadow if seen is not None else None
    if report is not None and report.request_id == p.shadow_request:
        if report.state in DEAD:
            mark(st, p.node, "failed", f"shadow run {report.state.value}: {report.reason or 'no reason given'}", now)
            return False
        verdict = judge_shadow(report, gate.thresholds())
        a = report.agreement
        if verdict.ok:
            st.log(f"{p.node}: shadow agreement F1 {verdict.score:.3f} over {a.frames if a else 0} frames", now)
            return True
        enough = a is not None and a.frames >= gate.frames
        if enough or report.state == ShadowState.DONE:
            mark(st, p.node, "failed", "shadow gate: " + "; ".join(verdict.reasons), now)
            return False
    if p.shadow_at is not None and now - p.shadow_at > gate.timeout_s:
        last = f"last report {report.state.value}" if report is not None else "no report"
        mark(st, p.node, "failed", f"no passing shadow report within {gate.timeout_s:g} s ({last})", now)
    return False


def clear(link: FleetSide, announcer: Announcer, p: NodeProgress) -> None:
    """Stop the node's shadow run (an empty retained message) once it is decided."""
    if p.shadow_request is not None:
        link.publish(announcer.topics.shadow(p.node), b"", retain=True)


__all__ = ["ask", "clear", "judge"]
