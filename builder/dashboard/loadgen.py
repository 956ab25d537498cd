"""A load generator of SIMULATED nodes for the dashboard's benchmark and tests. It measures nothing.

Each simulated node speaks the real payload models on the real topic tree through a real broker: retained
availability (with the `offline` last will), retained NodeState, periodic Telemetry and DetectionsMessage. It answers an announcement (announce/all, its groups,
announce/node/ID) as a real node reports one: retained UpdateStatus `downloading` → `trial` → `committed` and a
retained NodeState running the new version, over `update_delay_s` (None, the default: it ignores announcements);
it verifies no signature and loads no model.
The figures in its telemetry are made up (so power is labelled `estimated`, source `loadgen`, and the agent
version is `loadgen`); they exist only to give the dashboard something to draw and to time the page against.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import math
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from agent.protocol.manifest import Manifest, ModelFiles, OutputLayout, TensorSpec
from agent.protocol.messages import (
    Announcement,
    Detection,
    DetectionsMessage,
    ModelRef,
    NodeState,
    UpdateState,
    UpdateStatus,
)
from agent.protocol.telemetry import PowerInfo, Rates, StageLatency, Telemetry, Temperatures
from agent.protocol.topics import Topics
from agent.security.bundle import BundleError, file_entry, parse_manifest, write_manifest
from agent.security.keys import SigningKey
from builder.dashboard.link import make_client

LOADGEN_VERSION = "loadgen"
CLASSES = ("circle", "square", "triangle")


class Later:
    """One thread that runs callbacks at their time: a thousand simulated updates need not be a thousand timers."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call(self, delay_s: float, fn: Callable[[], object]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loadgen-later", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                fn = heapq.heappop(self._heap)[2]
            with contextlib.suppress(Exception):  # one simulated node's failure must not stop the others'
                fn()


LATER = Later()


class SimNode:
    """One simulated node on its own MQTT connection (so its last will works like a real agent's)."""

    def __init__(self, broker_url: str, node_id: str, topics: Topics, groups: list[str] | None = None,
                 model: ModelRef | None = None, backend: str = "cpu", seed: int = 0,
                 update_delay_s: float | None = None) -> None:
        self.node_id = node_id
        self.topics = topics
        self.groups = groups or []
        self.model = model or ModelRef(name="shapes", version=1)
        self.backend = backend
        self.rng = random.Random(seed)
        self.started = time.time()
        self.frame = 0
        self.stopped = False
        self.update_delay_s = update_delay_s  # None: ignore announcements
        self.updating: int | None = None  # the version being "installed"
        self.client, cfg = make_client(broker_url, f"sim-{node_id}")
        self.client.will_set(topics.availability(node_id), "offline", qos=1, retain=True)
        self.online = False  # announce_online() was called: announce again on every reconnect
        self.connects = 0
        self.client.on_connect = self._on_connect
        if update_delay_s is not None:
            self.client.on_message = self._on_announcement
        self.client.connect(cfg.host, cfg.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connects += 1
        if self.online and self.connects > 1:  # back after a broker restart: say so again, as an agent does
            self._announce()
        if self.update_delay_s is not None:
            client.subscribe([(t, 1) for t in self.topics.announce_subscriptions(self.node_id, self.groups)])

    def _on_announcement(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a withdrawn announcement
            return
        try:
            m = parse_manifest(Announcement.model_validate_json(msg.payload).manifest_bytes())
        except (ValidationError, ValueError, BundleError) as exc:
            self.publish_update(UpdateState.REJECTED, None, None, f"announcement rejected: {str(exc)[:120]}")
            return
        if not m.target.matches(self.node_id, self.groups) or m.version <= max(self.model.version, self.updating or 0):
            return  # not for this node, or not newer: a real node stays quiet too
        self.updating = m.version
        delay = self.update_delay_s or 0.0
        self.publish_update(UpdateState.DOWNLOADING, m.name, m.version, progress=0.5)
        LATER.call(delay / 2, lambda: self.publish_update(UpdateState.TRIAL, m.name, m.version))
        LATER.call(delay, lambda: self._commit(ModelRef(name=m.name, version=m.version)))

    def _commit(self, model: ModelRef) -> None:
        if self.stopped:
            return
        previous, self.model = self.model, model
        done = self.publish_update(UpdateState.COMMITTED, model.name, model.version)
        self.publish_state(last_update=done, previous=previous)

    def publish_update(self, state: UpdateState, name: str | None, version: int | None, reason: str | None = None,
                       progress: float | None = None) -> UpdateStatus:
        u = UpdateStatus(node=self.node_id, name=name, version=version, state=state, reason=reason, progress=progress,
                         running_version=self.model.version)
        self._pub(self.topics.update(self.node_id), u.model_dump_json(), retain=True, qos=1)
        return u

    def _pub(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 0) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def announce_online(self) -> None:
        self.online = True
        self._announce()

    def _announce(self) -> None:
        self._pub(self.topics.availability(self.node_id), "online", retain=True, qos=1)
        self.publish_state()

    def publish_state(self, last_update: UpdateStatus | None = None, previous: ModelRef | None = None) -> None:
        st = NodeState(node=self.node_id, status="running", agent_version=LOADGEN_VERSION, backend=self.backend,
                       device="simulated", model=self.model, groups=self.groups, camera="simulated",
                       last_update=last_update, previous_model=previous)
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
                 detections: bool = True, prefix_id: str = "sim", update_delay_s: float | None = None,
                 first: int = 0) -> None:
        self.interval_s = interval_s
        self.detections = detections
        self.nodes = [SimNode(broker_url, f"{prefix_id}-{i:03d}", topics, groups=[f"g{i % 3}"], seed=i,
                              update_delay_s=update_delay_s) for i in range(first, first + count)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def start(self, timeout_s: float = 60.0) -> SimFleet:
        """Every node announced and connected before telemetry starts."""
        for n in self.nodes:
            n.announce_online()
        deadline = time.monotonic() + timeout_s
        while not all(n.client.is_connected() for n in self.nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
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
        """Every node says `offline` first, then all disconnect: a thousand nodes stop in about a second."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        live = [n for n in self.nodes if not n.stopped and n.client.is_connected()]
        deadline = time.monotonic() + 5.0  # all together: a dead broker must not cost 5 s per node
        for info in [n._pub(n.topics.availability(n.node_id), "offline", retain=True, qos=1) for n in live]:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
        for n in self.nodes:
            n.stopped = True
            n.client.disconnect()
        for n in self.nodes:
            n.client.loop_stop()


def sim_bundle(dst: Path, name: str, version: int, key: SigningKey | None = None) -> Path:
    """A well-formed, signed bundle whose model file is opaque bytes: what a rollout to simulated nodes (or the
    dashboard, which never loads models) ships."""
    dst.mkdir(parents=True)
    (dst / "model_cpu.tflite").write_bytes(b"TFL3" + bytes(range(256)) * 4)
    m = Manifest(name=name, version=version, created=datetime.now(UTC),
                 files=[file_entry(dst, "model_cpu.tflite")], models=ModelFiles(cpu="model_cpu.tflite"),
                 input=TensorSpec(name="images", shape=[1, 160, 160, 3], dtype="uint8", scale=1 / 255, zero_point=0),
                 outputs=[TensorSpec(name="out", shape=[1, 100, 7], dtype="float32")],
                 class_names=list(CLASSES), layout=OutputLayout(decoder="yolo_nas_raw", num_classes=len(CLASSES)))
    write_manifest(dst, m, key or SigningKey.generate())
    return dst


PER_PROCESS = 300  # paho's network loop uses select(): 3 descriptors per client, none may be >= 1024


def main(argv: list[str] | None = None) -> int:
    """`python -m builder.dashboard.loadgen`: a simulated fleet in its own processes (as real nodes are), until
    SIGTERM or SIGINT. Prints `ready N` once every node is online, `rounds R` when stopped. Above PER_PROCESS
    nodes it runs one child process per PER_PROCESS nodes and speaks for them."""
    ap = argparse.ArgumentParser(description="simulated nodes (made-up figures) for the dashboard's benchmark")
    ap.add_argument("--broker", required=True, help="mqtt://host:port")
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--first", type=int, default=0, help="number of the first node (sim-NNN)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between each node's telemetry")
    ap.add_argument("--prefix", default=Topics().prefix)
    ap.add_argument("--update-delay", type=float, default=None,
                    help="answer announcements, committing after this many seconds (default: ignore them)")
    ap.add_argument("--no-detections", action="store_true")
    ap.add_argument("--exit-with-stdin", action="store_true",
                    help="also stop when stdin closes (the parent died): no orphaned fleet keeps publishing")
    args = ap.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.exit_with_stdin:
        threading.Thread(target=_stop_at_eof, args=(stop,), daemon=True).start()
    if args.nodes > PER_PROCESS:
        return _shards(argv if argv is not None else sys.argv[1:], args.nodes, stop)
    fleet = SimFleet(args.broker, args.nodes, Topics(args.prefix), interval_s=args.interval,
                     detections=not args.no_detections, update_delay_s=args.update_delay, first=args.first).start()
    print(f"ready {len(fleet.nodes)}", flush=True)
    stop.wait()
    fleet.stop()
    with contextlib.suppress(BrokenPipeError):  # the parent may be gone
        print(f"rounds {fleet.rounds}", flush=True)
    return 0


def _stop_at_eof(stop: threading.Event) -> None:
    sys.stdin.read()
    stop.set()


def _shards(argv: list[str], nodes: int, stop: threading.Event) -> int:
    """One child per PER_PROCESS nodes (the same command with --first/--nodes); `ready` when all are."""
    kids = []
    for first in range(0, nodes, PER_PROCESS):
        cmd = [sys.executable, "-m", "builder.dashboard.loadgen", *argv, "--first", str(first),
               "--nodes", str(min(PER_PROCESS, nodes - first)), "--exit-with-stdin"]
        kids.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    ready = sum(int(k.stdout.readline().split()[1]) for k in kids if k.stdout)  # "ready N" from each
    print(f"ready {ready}", flush=True)
    stop.wait()
    rounds = []
    for k in kids:
        k.terminate()
    for k in kids:
        try:
            out, _ = k.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            k.kill()
            out, _ = k.communicate()
        rounds += [int(x.split()[1]) for x in out.splitlines() if x.startswith("rounds ")]
    with contextlib.suppress(BrokenPipeError):  # the parent may be gone
        print(f"rounds {min(rounds, default=0)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
