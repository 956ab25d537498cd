"""The rollout record (persisted as JSON) and its pure transitions.

A rollout is `running` -> `completed`, or stops at `halted` (a wave failed its gates) or `aborted`
(operator); `paused` holds between waves and while announcing. Node statuses: waiting (its wave has not
come) -> announced -> committed (its UpdateStatus says committed, or it runs the version) -> healthy (stayed
healthy for the soak time) | failed (rolled back / failed / rejected / unhealthy / timed out).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Literal

from pydantic import BaseModel, Field

from builder.rollout.gates import Thresholds, wave_verdict
from builder.rollout.shadow_gate import ShadowThresholds

Phase = Literal["running", "paused", "halted", "completed", "aborted"]
NodeStatus = Literal["waiting", "shadowing", "announced", "committed", "healthy", "failed"]
TERMINAL_PHASES = ("halted", "completed", "aborted")
MAX_EVENTS = 200
FAILED_UPDATES = ("rolled_back", "failed", "rejected")


class NodeProgress(BaseModel):
    node: str
    wave: int
    status: NodeStatus = "waiting"
    reason: str | None = None
    previous_version: int | None = None
    announced_at: float | None = None
    committed_at: float | None = None
    rolled_back: bool = False  # by this rollout (--rollback-on-halt / abort --rollback)
    baseline: dict[str, float | None] | None = None  # gates.Health before the announcement (kept across restarts)
    shadow_request: str | None = None  # the shadow run asked before announcing (settings.shadow)
    shadow_at: float | None = None


class ShadowGateSettings(BaseModel):
    """Before a node is announced the version, it runs it in shadow beside its live model on its own frames
    (docs/SHADOW.md); it is announced only when the agreement passes (builder.rollout.shadow_gate)."""

    frames: int = Field(default=20, ge=1, description="compared frames the run stops at, and the gate requires")
    min_f1: float = Field(default=0.8, ge=0, le=1)
    timeout_s: float = Field(default=300.0, gt=0, description="no passing report within this long: the node fails")
    every_nth: int = Field(default=1, ge=1)
    max_rate_hz: float = Field(default=2.0, gt=0, le=10)

    def thresholds(self) -> ShadowThresholds:
        return ShadowThresholds(min_frames=self.frames, min_f1=self.min_f1)


class RolloutSettings(BaseModel):
    """Everything a restarted runner needs to carry on."""

    bundle: str
    broker: str
    key: str
    http_base: str
    upload: str | None = None
    prefix: str = "edgefleet"
    username: str | None = None  # broker user (the password is never recorded: --password / EDGE_MQTT_PASSWORD)
    ca: str | None = None
    target: str = "all"
    waves_spec: str
    rollback_on_halt: bool = False
    shadow: ShadowGateSettings | None = None  # shadow-run each node on the candidate before announcing it
    manifest_version: int = Field(default=2, ge=1, le=2, description="1 for nodes older than manifest schema 2")
    thresholds: dict[str, float | None] = Field(default_factory=dict)

    def gates(self) -> Thresholds:
        return Thresholds(**self.thresholds)  # type: ignore[arg-type]


class RolloutState(BaseModel):
    id: str
    name: str
    version: int
    created: float = Field(default_factory=time.time)
    settings: RolloutSettings
    waves: list[list[str]]
    current_wave: int = 0
    phase: Phase = "running"
    reason: str | None = None
    base_url: str | None = None  # where the files are served (set once uploaded)
    nodes: dict[str, NodeProgress] = Field(default_factory=dict)
    events: list[str] = Field(default_factory=list)  # the newest MAX_EVENTS
    event_count: int = 0  # events ever logged (the list is capped)

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def wave_nodes(self, i: int | None = None) -> list[NodeProgress]:
        i = self.current_wave if i is None else i
        return [self.nodes[n] for n in self.waves[i]] if 0 <= i < len(self.waves) else []

    def log(self, text: str, now: float | None = None) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime(time.time() if now is None else now))
        self.events = [*self.events, f"{stamp} {text}"][-MAX_EVENTS:]
        self.event_count += 1


def new_state(rollout_id: str, name: str, version: int, settings: RolloutSettings, waves: list[list[str]],
              th: Thresholds) -> RolloutState:
    settings = settings.model_copy(update={"thresholds": asdict(th)})
    nodes = {n: NodeProgress(node=n, wave=i) for i, wave in enumerate(waves) for n in wave}
    st = RolloutState(id=rollout_id, name=name, version=version, settings=settings, waves=waves, nodes=nodes)
    st.log(f"planned {len(waves)} wave(s): " + " | ".join(",".join(w) for w in waves))
    return st


def on_update(st: RolloutState, node: str, version: int | None, update: str, reason: str | None,
              now: float) -> bool:
    """A node's UpdateStatus (or running version, update='running'). True when the record changed."""
    p = st.nodes.get(node)
    if p is None or version != st.version or p.status in ("waiting", "healthy", "failed"):
        return False
    if update in ("committed", "running") and p.status == "announced":
        p.status, p.committed_at = "committed", now
        st.log(f"{node}: committed v{st.version}", now)
        return True
    if update in FAILED_UPDATES:
        p.status, p.reason = "failed", f"{update}: {reason or 'no reason given'}"
        st.log(f"{node}: {p.reason}", now)
        return True
    return False


def mark(st: RolloutState, node: str, status: NodeStatus, reason: str | None, now: float) -> None:
    p = st.nodes[node]
    p.status, p.reason = status, reason
    st.log(f"{node}: {status}" + (f" ({reason})" if reason else ""), now)


def expire(st: RolloutState, th: Thresholds, now: float) -> None:
    """Nodes of the current wave without a result within the wave timeout fail."""
    for p in st.wave_nodes():
        if p.status == "announced" and p.announced_at is not None and now - p.announced_at > th.wave_timeout_s:
            mark(st, p.node, "failed", f"no result within {th.wave_timeout_s:g} s", now)


def advance(st: RolloutState, th: Thresholds, now: float) -> str:
    """Judge the current wave; move to the next, complete or halt. Returns the wave's verdict."""
    if st.phase != "running":
        return "running"
    verdict = wave_verdict([p.status for p in st.wave_nodes()], th)
    if verdict == "failed":
        bad = [f"{p.node}: {p.reason}" for p in st.wave_nodes() if p.status == "failed"]
        st.phase = "halted"
        st.reason = f"wave {st.current_wave + 1} failed: " + "; ".join(bad or ["too few nodes committed"])
        st.log(st.reason, now)
    elif verdict == "passed":
        st.log(f"wave {st.current_wave + 1} passed", now)
        if st.current_wave + 1 >= len(st.waves):
            st.phase, st.reason = "completed", None
            st.log(f"rollout of {st.name} v{st.version} completed", now)
        else:
            st.current_wave += 1
    return verdict


def set_phase(st: RolloutState, phase: Phase, reason: str | None, now: float) -> bool:
    """Operator's pause / resume / abort. False when the rollout is already over (or already there)."""
    if st.done or st.phase == phase:
        return False
    st.phase, st.reason = phase, reason
    st.log(f"{phase}" + (f": {reason}" if reason else ""), now)
    return True


__all__ = ["FAILED_UPDATES", "NodeProgress", "Phase", "RolloutSettings", "RolloutState", "TERMINAL_PHASES",
           "advance", "expire", "mark", "new_state", "on_update", "set_phase"]
