"""A load generator of SIMULATED nodes for the dashboard's benchmark and tests. It measures nothing.

Each simulated node speaks the real payload models on the real topic tree through a real broker: retained
availability (with the `offline` last will), retained NodeState, periodic Telemetry and DetectionsMessage.
The figures in its telemetry are made up (so power is labelled `estimated`, source `loadgen`, and the agent
version is `loadgen`); they exist only to give the dashboard something to draw and to time the page against.
"""

from __future__ import annotations

import math
import random
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from agent.protocol.messages import Detection, DetectionsMessage, ModelRef, NodeState, UpdateStatus
from agent.protocol.telemetry import PowerInfo, Rates, StageLatency, Telemetry, Temperatures
from agent.protocol.topics import Topics
from builder.dashboard.link import make_client

LOADGEN_VERSION = "loadgen"
CLASSES = ("circle", "square", "triangle")


class SimNode:
    """One simulated node on its own MQTT connection (so its last will works like a real agent's)."""

    def __init__(self, broker_url: str, node_id: str, topics: Topics, groups: list[str] | None = None,
                 model: ModelRef | None = None, backend: str = "cpu", seed: int = 0) -> None:
        self.node_id = node_id
        self.topics = topics
        self.groups = groups or []
        self.model = model or ModelRef(name="shapes", version=1)
        self.backend = backend
        self.rng = random.Random(seed)
        self.started = time.time()
        self.frame = 0
        self.stopped = False
        self.client, cfg = make_client(broker_url, f"sim-{node_id}")
        self.client.will_set(topics.availability(node_id), "offline", qos=1, retain=True)
        self.client.connect(cfg.host, cfg.port, keepalive=30)
        self.client.loop_start()

    def _pub(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 0) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def announce_online(self) -> None:
        self._pub(self.topics.availability(self.node_id), "online", retain=True, qos=1)
        self.publish_state()

    def publish_state(self, last_update: UpdateStatus | None = None) -> None:
        st = NodeState(node=self.node_id, status="running", agent_version=LOADGEN_VERSION, backend=self.backend,
                       device="simulated", model=self.model, groups=self.groups, camera="simulated",
                       last_update=last_update)
        self._pub(self.topics.state(self.node_id), st.model_dump_json(), retain=True, qos=1)

    def telemetry(self, interval_s: float = 1.0) -> Telemetry:
        r = self.rng
        base = 4.0 + 0.5 * math.sin(time.time() / 20 + hash(self.node_id) % 7)
        p50 = base + r.uniform(-0.2, 0.2)
        return Telemetry(
            node=self.node_id, ts=datetime.now(UTC), interval_s=interval_s, agent_version=LOADGEN_VERSION,
            uptime_s=time.time() - self.started, status="running", backend=self.backend,
            model_name=self.model.name, model_version=self.model.version,
            latency={"invoke": StageLatency(count=30, p50_ms=p50, p95_ms=p50 * r.uniform(1.2, 1.6)),
                     "end_to_end": StageLatency(count=30, p50_ms=p50 + 3, p95_ms=p50 * 1.8 + 3)},
            rates=Rates(camera_fps=30.0, inference_fps=r.uniform(27, 30)),
            cpu_percent=r.uniform(40, 60),
            power=PowerInfo(source="loadgen", estimated=True, watts=round(r.uniform(3.8, 4.6), 2)),
            temperatures=Temperatures(cpu_c=r.uniform(48, 56)),
        )

    def publish_telemetry(self, interval_s: float = 1.0) -> None:
        self._pub(self.topics.telemetry(self.node_id), self.telemetry(interval_s).model_dump_json())

    def publish_detections(self) -> None:
        r = self.rng
        dets = []
        for _ in range(r.randint(0, 3)):
            x, y, w, hgt = r.uniform(0, .7), r.uniform(0, .7), r.uniform(.1, .3), r.uniform(.1, .3)
            c = r.randrange(len(CLASSES))
            dets.append(Detection(box=(x, y, x + w, y + hgt), class_id=c, class_name=CLASSES[c],
                                  score=round(r.uniform(.4, .99), 3)))
        self.frame += 30
        msg = DetectionsMessage(node=self.node_id, frame_ts=time.time(), frame_index=self.frame,
                                model_name=self.model.name, model_version=self.model.version,
                                backend=self.backend, detections=dets)
        self._pub(self.topics.detections(self.node_id), msg.model_dump_json())

    def publish_raw(self, leaf: str, payload: bytes, retain: bool = False) -> None:
        self._pub(self.topics.node(self.node_id, leaf), payload, retain=retain, qos=1 if retain else 0)

    def stop(self, graceful: bool = True) -> None:
        if self.stopped:
            return
        self.stopped = True
        if graceful and self.client.is_connected():
            self._pub(self.topics.availability(self.node_id), "offline", retain=True, qos=1).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


class SimFleet:
    """N simulated nodes publishing telemetry (and detections) every `interval_s` from one thread."""

    def __init__(self, broker_url: str, count: int, topics: Topics, interval_s: float = 1.0,
                 detections: bool = True, prefix_id: str = "sim") -> None:
        self.interval_s = interval_s
        self.detections = detections
        self.nodes = [SimNode(broker_url, f"{prefix_id}-{i:03d}", topics, groups=[f"g{i % 3}"], seed=i)
                      for i in range(count)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def start(self) -> SimFleet:
        for n in self.nodes:
            n.announce_online()
        self._thread = threading.Thread(target=self._run, name="simfleet", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # Spread the nodes over the interval, as real nodes started at different times would be.
        step = self.interval_s / max(1, len(self.nodes))
        next_t = time.monotonic()
        while not self._stop.is_set():
            for n in self.nodes:
                n.publish_telemetry(self.interval_s)
                if self.detections:
                    n.publish_detections()
                next_t += step
                if self._stop.wait(max(0.0, next_t - time.monotonic())):
                    return
            self.rounds += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for n in self.nodes:
            n.stop()
