"""The fleet as the dashboard sees it, built from MQTT messages.

One `FleetState` per server. The MQTT thread calls `handle(topic, payload)`; readers (SSE connections, the
terminal table) take JSON views. Every change bumps a version counter, and each node remembers the version
of its last change, so a reader sends only what changed since it last looked. A payload that does not parse
marks just that node faulty (with the reason); every other node keeps updating.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from agent.protocol.manifest import Target
from agent.protocol.messages import DetectionsMessage, NodeState, UpdateState, UpdateStatus
from agent.protocol.topics import Topics
from builder.dashboard.payloads import MalformedPayload, parse_model
from builder.dashboard.shadow_view import LEAF as SHADOW_LEAF
from builder.dashboard.shadow_view import ShadowView, read_shadow_report
from builder.dashboard.telemetry_view import CameraReading, TelemetryReading, read_telemetry

log = logging.getLogger(__name__)
# Leaves the dashboard subscribes to (snapshot is binary JPEG, kept as bytes).
LEAVES = ("availability", "state", "telemetry", "detections", "update", "snapshot", SHADOW_LEAF)
# Per-camera leaves of multi-camera nodes (MQTT wildcards under the node); the page shows a summary per camera.
CAMERA_LEAVES = ("camera/+/detections",)
TERMINAL = {UpdateState.COMMITTED, UpdateState.ROLLED_BACK, UpdateState.REJECTED, UpdateState.FAILED}
GOOD = {UpdateState.COMMITTED}
MAX_DETECTIONS = 20  # per node, highest score first: the page draws these
FAULT_HOLD_S = 10.0
TAIL = 5  # history points sent with each delta; the page merges them by time


class DetectionView(BaseModel):
    box: tuple[float, float, float, float]
    class_name: str
    score: float


class CameraView(CameraReading):
    """One camera under its node's row: its telemetry plus a summary of its last detections message."""

    detections: int | None = None  # objects in its last message (None: none seen)
    classes: list[str] = Field(default_factory=list)  # their class names, highest score first, distinct
    detections_ts: float | None = None  # capture time (node clock)


class NodeView(BaseModel):
    """One node's row, cards and chart feed, exactly as sent to the page (JSON)."""

    id: str
    online: bool | None = None  # None: no availability message yet
    status: str | None = None
    reason: str | None = None
    agent_version: str | None = None
    backend: str | None = None
    device: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    groups: list[str] = Field(default_factory=list)
    camera: str | None = None
    cameras: dict[str, CameraView] = Field(default_factory=dict)  # multi-camera nodes only (by name)
    telemetry: TelemetryReading | None = None
    telemetry_rx: float | None = None  # server clock when the last good telemetry arrived
    update: UpdateStatus | None = None
    update_rx: float | None = None
    detections: list[DetectionView] = Field(default_factory=list)
    detections_ts: float | None = None  # capture time of that frame (node clock)
    detections_frame: int | None = None
    has_snapshot: bool = False
    shadow: ShadowView | None = None  # the latest shadow run report (None: none, or cleared)
    faults: dict[str, str] = Field(default_factory=dict)  # leaf -> why its last payload was rejected
    rejected: int = 0  # payloads from this node that did not parse
    last_seen: float | None = None  # server clock, any message


class Rollout(BaseModel):
    id: int
    bundle: str
    name: str
    version: int
    target: str
    started: float
    published_by: str = "dashboard"


class _Node:
    def __init__(self, node_id: str, history: int) -> None:
        self.view = NodeView(id=node_id)
        self.hist: deque[tuple[float, float | None, float | None, float | None]] = deque(maxlen=history)
        self.snapshot: bytes | None = None
        self.changed = 0  # state version of the last change
        self.fault_at: dict[str, float] = {}
        # The delta form of this node at version `changed`: every SSE connection sends the same dict, so it is
        # built once per change, not once per connection and flush (1,000 nodes at 1 Hz: docs/SCALE.md).
        self.delta_json: dict[str, Any] | None = None
        # Shadow reports come every few seconds, the node's other leaves every second: a delta carries the
        # node's `shadow` only to a reader that has not seen its last change (the page keeps the one it has).
        self.shadow_changed = 0
        self.delta_lite: dict[str, Any] | None = None


class FleetState:
    def __init__(self, topics: Topics | None = None, history: int = 180,
                 clock: Callable[[], float] = time.time) -> None:
        self.topics = topics or Topics()
        self.history = history
        self.clock = clock
        self._cond = threading.Condition()
        self._nodes: dict[str, _Node] = {}
        self._rollouts: list[Rollout] = []
        self._rollouts_changed = 0
        self._ids = itertools.count(1)
        self.version = 0
        self.messages = 0
        self.rejected = 0
        self.broker_connected = False
        self.broker_error: str | None = None

    # ---- input (MQTT thread) ----------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> str | None:
        """Apply one message; return the node id it touched (None: not a node topic we draw)."""
        parsed = self.topics.parse_node_topic(topic)
        if parsed is None:
            return None
        node_id, leaf = parsed
        if leaf not in LEAVES and _camera_of(leaf) is None:
            return None
        now = self.clock()
        with self._cond:
            self.messages += 1
            node = self._nodes.get(node_id)
            if node is None:
                if not payload:  # a retained message being cleared for a node we never saw
                    return None
                node = self._nodes[node_id] = _Node(node_id, self.history)
            v = node.view
            v.last_seen = now
            try:
                self._apply(node, leaf, payload, now)
                # A good payload clears the fault, but only after FAULT_HOLD_S: one bad message between
                # good ones must still be visible to a human glancing at the page.
                if leaf in v.faults and now - node.fault_at.get(leaf, 0.0) >= FAULT_HOLD_S:
                    del v.faults[leaf]
            except MalformedPayload as exc:
                self.rejected += 1
                if v.faults.get(leaf) != str(exc):  # once per new reason: a node repeating it cannot flood the log
                    log.warning("node %s: %s rejected: %s", node_id, leaf, exc)
                v.faults[leaf] = str(exc)
                node.fault_at[leaf] = now
                v.rejected += 1
            self.version += 1
            node.changed = self.version
            node.delta_json = node.delta_lite = None
            if leaf == SHADOW_LEAF:
                node.shadow_changed = self.version
            if leaf in ("update", "state"):
                self._rollouts_changed = self.version
            self._cond.notify_all()
        return node_id

    def _apply(self, node: _Node, leaf: str, payload: bytes, now: float) -> None:
        v = node.view
        camera = _camera_of(leaf)
        if camera is not None:
            _apply_camera_detections(v, camera, payload)
        elif leaf == "availability":
            text = payload.decode("utf-8", "replace").strip().lower()
            if text not in ("online", "offline", ""):
                raise MalformedPayload(f"availability must be online/offline, not {text[:40]!r}")
            v.online = None if text == "" else text == "online"
        elif leaf == "state":
            if not payload:
                return
            st = parse_model(NodeState, payload, "state")
            v.status, v.reason, v.agent_version = st.status, st.reason, st.agent_version
            v.backend, v.device, v.camera, v.groups = st.backend, st.device, st.camera, list(st.groups)
            if st.model is not None:
                v.model_name, v.model_version = st.model.name, st.model.version
            else:
                v.model_name = v.model_version = None
            if st.last_update is not None and v.update is None:
                v.update = st.last_update  # no update topic seen yet: show what the state says
        elif leaf == "telemetry":
            t = read_telemetry(payload)
            v.telemetry, v.telemetry_rx = t, now
            if t.cameras:  # a node without `cameras` (older agents) keeps its single-camera row
                v.cameras = _merge_cameras(v.cameras, t.cameras)
            if t.backend and not v.backend:
                v.backend = t.backend
            node.hist.append((round(now, 3), t.p50_ms, t.p95_ms, t.power_w))
        elif leaf == "detections":
            d = parse_model(DetectionsMessage, payload, "detections")
            best = sorted(d.detections, key=lambda x: -x.score)[:MAX_DETECTIONS]
            v.detections = [DetectionView(box=x.box, class_name=x.class_name, score=round(x.score, 3)) for x in best]
            v.detections_ts, v.detections_frame = d.frame_ts, d.frame_index
            v.model_name, v.model_version = d.model_name, d.model_version
            v.backend = d.backend
        elif leaf == "update":
            if not payload:
                return
            v.update, v.update_rx = parse_model(UpdateStatus, payload, "update"), now
        elif leaf == "snapshot":
            node.snapshot = payload or None
            v.has_snapshot = bool(payload)
        elif leaf == SHADOW_LEAF:  # empty: the retained report was cleared
            v.shadow = read_shadow_report(payload, v.id) if payload else None

    def set_broker(self, connected: bool, error: str | None = None) -> None:
        """The MQTT link's state, shown in the page header (a dead broker must not look like a quiet fleet)."""
        with self._cond:
            self.broker_connected, self.broker_error = connected, error
            self.version += 1
            self._cond.notify_all()

    # ---- rollouts ----------------------------------------------------------------------------------
    def add_rollout(self, bundle: str, name: str, version: int, target: Target) -> Rollout:
        with self._cond:
            r = Rollout(id=next(self._ids), bundle=bundle, name=name, version=version, target=str(target),
                        started=self.clock())
            self._rollouts.append(r)
            del self._rollouts[:-10]
            self.version += 1
            self._rollouts_changed = self.version
            self._cond.notify_all()
            return r

    def _rollout_view(self, r: Rollout) -> dict[str, Any]:
        target = Target.parse(r.target)
        rows = []
        for node_id in sorted(self._nodes):
            v = self._nodes[node_id].view
            u = v.update
            ours = (u is not None and v.update_rx is not None and v.update_rx >= r.started
                    and u.version == r.version and (u.name in (None, r.name)))
            if not ours and not target.matches(node_id, v.groups):
                continue
            if ours:
                assert u is not None
                state = u.state.value
                done = u.state in TERMINAL
                ok = u.state in GOOD
                rows.append({"node": node_id, "state": state, "progress": u.progress, "reason": u.reason,
                             "done": done, "ok": ok})
            elif v.model_version == r.version and v.model_name == r.name:
                rows.append({"node": node_id, "state": "running", "progress": None, "reason": None,
                             "done": True, "ok": True})
            else:
                rows.append({"node": node_id, "state": "waiting", "progress": None, "reason": None,
                             "done": False, "ok": False})
        return {**r.model_dump(), "nodes": rows,
                "done": bool(rows) and all(x["done"] for x in rows),
                "committed": sum(1 for x in rows if x["ok"]),
                "failed": sum(1 for x in rows if x["done"] and not x["ok"])}

    # ---- output (readers) --------------------------------------------------------------------------
    def _node_json(self, node: _Node, full: bool, since: int = 0) -> dict[str, Any]:
        """The node for a reader at version `since`: everything when `full`, else its delta form (without
        `shadow` when the reader already has its latest)."""
        lite = not full and node.shadow_changed <= since
        if not full and node.delta_json is not None:
            return node.delta_lite if lite and node.delta_lite is not None else node.delta_json
        d = node.view.model_dump(mode="json")
        d["v"] = node.changed
        d["hist"] = list(node.hist) if full else list(node.hist)[-TAIL:]
        if full:
            return d
        node.delta_json, node.delta_lite = d, {k: x for k, x in d.items() if k != "shadow"}
        return node.delta_lite if lite else d

    def snapshot(self) -> dict[str, Any]:
        """Everything, with the full chart history: the first event of every page."""
        with self._cond:
            return {"type": "snapshot", "v": self.version, "now": self.clock(),
                    "nodes": [self._node_json(n, True) for _, n in sorted(self._nodes.items())],
                    "rollouts": [self._rollout_view(r) for r in self._rollouts],
                    "stats": self._stats()}

    def delta(self, since: int) -> dict[str, Any] | None:
        """What changed after version `since` (None: nothing)."""
        with self._cond:
            if self.version <= since:
                return None
            out: dict[str, Any] = {
                "type": "delta", "v": self.version, "now": self.clock(),
                "nodes": [self._node_json(n, False, since) for _, n in sorted(self._nodes.items())
                          if n.changed > since],
                "stats": self._stats(),
            }
            if self._rollouts_changed > since:
                out["rollouts"] = [self._rollout_view(r) for r in self._rollouts]
            return out

    def wait(self, since: int, timeout: float) -> bool:
        """Block until the version passes `since` (True) or `timeout` elapses (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.version > since, timeout)

    def _stats(self) -> dict[str, Any]:
        return {"nodes": len(self._nodes), "messages": self.messages, "rejected": self.rejected,
                "online": sum(1 for n in self._nodes.values() if n.view.online),
                "broker": self.broker_connected, "broker_error": self.broker_error}

    def nodes(self) -> list[NodeView]:
        with self._cond:
            return [n.view.model_copy(deep=True) for _, n in sorted(self._nodes.items())]

    def node(self, node_id: str) -> NodeView | None:
        with self._cond:
            n = self._nodes.get(node_id)
            return n.view.model_copy(deep=True) if n else None

    def snapshot_jpeg(self, node_id: str) -> bytes | None:
        with self._cond:
            n = self._nodes.get(node_id)
            return n.snapshot if n else None

    def rollouts(self) -> list[dict[str, Any]]:
        with self._cond:
            return [self._rollout_view(r) for r in self._rollouts]


def _camera_of(leaf: str) -> str | None:
    """`camera/{name}/detections` → name; anything else → None."""
    parts = leaf.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "camera" and parts[2] == "detections" and parts[1] else None


def _merge_cameras(old: dict[str, CameraView], new: dict[str, CameraReading]) -> dict[str, CameraView]:
    """Telemetry decides which cameras exist; each keeps the detections summary it already had."""
    out = {}
    for name, r in sorted(new.items()):
        prev = old.get(name)
        seen = {"detections": prev.detections, "classes": prev.classes,
                "detections_ts": prev.detections_ts} if prev else {}
        out[name] = CameraView(**r.model_dump(), **seen)
    return out


def _apply_camera_detections(v: NodeView, camera: str, payload: bytes) -> None:
    if not payload:
        return
    d = parse_model(DetectionsMessage, payload, f"camera/{camera}/detections")
    cam = v.cameras.setdefault(camera, CameraView())
    best = sorted(d.detections, key=lambda x: -x.score)
    cam.detections, cam.detections_ts = len(best), d.frame_ts
    cam.classes = list(dict.fromkeys(x.class_name for x in best))[:5]


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)
