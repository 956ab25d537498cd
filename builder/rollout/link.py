"""The rollout runner's MQTT link: what every node says (state, availability, update, telemetry,
detections) and the two things the runner sends (retained per-node announcements, v5 commands)."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from pydantic import ValidationError

from agent.protocol.messages import CommandResponse, DetectionsMessage, NodeState, UpdateStatus
from agent.protocol.shadow import ShadowReport
from agent.protocol.telemetry import Telemetry
from agent.protocol.topics import Topics
from builder.rollout.gates import DetectionSample, Sample

MAX_SAMPLES = 2000  # per node: hours of telemetry at 1 s, a bounded memory


class LinkError(Exception):
    """Cannot reach the broker."""


@dataclass
class NodeSeen:
    node: str
    online: bool | None = None
    state: NodeState | None = None
    update: UpdateStatus | None = None
    samples: list[Sample] = field(default_factory=list)
    detections: list[DetectionSample] = field(default_factory=list)
    shadow: ShadowReport | None = None  # the node's latest shadow run report (the rollout's shadow gate)

    @property
    def running_version(self) -> int | None:
        return self.state.model.version if self.state and self.state.model else None


class FleetSide(Protocol):
    """What RolloutEngine needs from the MQTT side; RolloutLink is one, a dashboard's link can be another."""

    def snapshot(self, node: str) -> NodeSeen | None: ...

    def publish(self, topic: str, payload: bytes, retain: bool = True, timeout: float = 10.0) -> None: ...

    def command(self, node: str, request: dict[str, Any], timeout: float = 30.0) -> CommandResponse | None: ...


class RolloutLink:
    def __init__(self, broker_url: str, topics: Topics, ca_file: Path | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.url, self.topics = broker_url, topics
        u = urlparse(broker_url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise LinkError(f"broker URL must look like mqtt://host:port, not {broker_url!r}")
        self._host, self._port = u.hostname, u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)
        self.nodes: dict[str, NodeSeen] = {}
        self.lock = threading.Lock()
        self._responses: dict[bytes, CommandResponse] = {}
        client_id = f"edge-rollout-{uuid.uuid4().hex[:8]}"
        # Nodes answer only under {prefix}/admin/{client}/replies (agent.service.commands).
        self._reply_topic = f"{topics.admin_replies(client_id)}/rollout"
        self._ready = threading.Event()
        self._refused: str | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=client_id)
        if username or u.username:
            self.client.username_pw_set(username or u.username, password or u.password)
        if u.scheme in ("mqtts", "ssl"):
            self.client.tls_set(ca_certs=str(ca_file) if ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> RolloutLink:
        try:
            self.client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise LinkError(f"cannot connect to broker {self.url}: {exc}") from None
        self.client.loop_start()
        if not self._ready.wait(timeout) or self._refused:
            self.stop()
            why = f"refused the connection: {self._refused}" if self._refused else f"no CONNACK within {timeout:.0f} s"
            raise LinkError(f"broker {self.url} {why}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._refused = str(reason) if getattr(reason, "is_failure", False) else None
        if self._refused:
            self._ready.set()
            return
        leaves = ("state", "availability", "update", "telemetry", "detections", "shadow/report")
        c.subscribe([(self.topics.all_nodes(leaf), 1) for leaf in leaves] + [(self._reply_topic, 1)])
        self._ready.set()

    def _on_message(self, c: Any, userdata: Any, msg: Any) -> None:
        payload = bytes(msg.payload)
        try:
            if msg.topic == self._reply_topic:
                corr = getattr(msg.properties, "CorrelationData", None)
                with self.lock:
                    self._responses[bytes(corr or b"")] = CommandResponse.model_validate_json(payload)
                return
            parsed = self.topics.parse_node_topic(msg.topic)
            if parsed is None or not payload:
                return
            self._record(parsed[0], parsed[1], payload, time.time())
        except (ValidationError, ValueError):
            return  # a malformed message from one node is that node's problem, not the rollout's

    def _record(self, node: str, leaf: str, payload: bytes, now: float) -> None:
        with self.lock:
            seen = self.nodes.setdefault(node, NodeSeen(node))
            if leaf == "availability":
                seen.online = payload.decode(errors="replace").strip() == "online"
            elif leaf == "state":
                seen.state = NodeState.model_validate_json(payload)
            elif leaf == "update":
                seen.update = UpdateStatus.model_validate_json(payload)
            elif leaf == "telemetry":
                t = Telemetry.model_validate_json(payload)
                inv = t.latency.get("invoke")
                # detections per frame only when counted on the model the message is about (None: older agent)
                c = t.detections if t.detections and t.detections.model_version == t.model_version else None
                seen.samples = [*seen.samples[-MAX_SAMPLES:], Sample(
                    now, t.model_version, inv.p95_ms if inv else None, t.counters.frames_inferred,
                    t.counters.inference_errors, c.frames if c else None, c.total if c else None)]
            elif leaf == "shadow/report":
                seen.shadow = ShadowReport.model_validate_json(payload)
            elif leaf == "detections":
                d = DetectionsMessage.model_validate_json(payload)
                seen.detections = [*seen.detections[-MAX_SAMPLES:],
                                   DetectionSample(now, d.model_version, len(d.detections))]

    def snapshot(self, node: str) -> NodeSeen | None:
        with self.lock:
            s = self.nodes.get(node)
            return None if s is None else NodeSeen(s.node, s.online, s.state, s.update, list(s.samples),
                                                   list(s.detections), s.shadow)

    def known(self) -> list[NodeSeen]:
        with self.lock:
            return [NodeSeen(s.node, s.online, s.state, s.update) for s in self.nodes.values()]

    def publish(self, topic: str, payload: bytes, retain: bool = True, timeout: float = 10.0) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise LinkError(f"broker did not acknowledge the publish on {topic} within {timeout:.0f} s")

    def command(self, node: str, request: dict[str, Any], timeout: float = 30.0) -> CommandResponse | None:
        """An MQTT v5 request/response command (agent.service.commands); None without an answer."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self._reply_topic
        props.CorrelationData = corr
        self.client.publish(self.topics.command(node), json.dumps(request), qos=1, properties=props)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if corr in self._responses:
                    return self._responses.pop(corr)
            time.sleep(0.05)
        return None


__all__ = ["FleetSide", "LinkError", "NodeSeen", "RolloutLink"]
