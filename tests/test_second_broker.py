"""The fleet on a second, independent MQTT 5 broker: Debian's ejabberd (mod_mqtt), not Mosquitto.

One ejabberd per module (builder.fleet.ejabberd.LocalEjabberd: passwords checked by ejabberd's external
auth, docs/mosquitto/edge-fleet.acl translated into mod_mqtt's access rules) and one real `edge-agent run`
daemon (a 4 fps video camera, node credentials). What must hold on any broker (docs/BROKERS.md):
- the node's state and availability are retained (a late subscriber gets them, flagged retained) and its
  telemetry and detections flow live;
- the per-node ACL: another node can neither write nor wildcard-read this node's topics, cannot take over its
  session with the same client id, and a wrong password is refused;
- an MQTT v5 command (Response Topic + Correlation Data) is answered (builder.rollout.link.RolloutLink);
- the dashboard's link sees the node; a signed announcement updates it; a rollout (waves `1`) completes;
- kill -9 of the daemon makes the broker publish its last will "offline", retained.
The tests share the daemon and run in file order; the last one kills it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from helpers_nodes import node_config
from helpers_updates import make_variant

from agent.protocol.topics import Topics
from agent.security.bundle import Bundle
from builder.fleet.devservices import FileServer
from builder.fleet.ejabberd import LocalEjabberd, find_ejabberd

ROOT = Path(__file__).resolve().parents[1]
NODE, OTHER, ADMIN = "node-a", "node-b", "fleet-admin"
USERS = {NODE: "pw-node-a", OTHER: "pw-node-b", ADMIN: "pw-admin"}
TOPICS = Topics()

pytestmark = pytest.mark.slow

if find_ejabberd() is None:
    pytest.skip("ejabberd not installed (apt-get install ejabberd; .ci/run installs it)", allow_module_level=True)


class Recorder:
    """A real paho v5 client logged in as `user`: every message under {prefix}/node/#, in order."""

    def __init__(self, broker: LocalEjabberd, user: str = ADMIN, client_id: str | None = None,
                 topic: str = "edgefleet/node/#") -> None:
        import paho.mqtt.client as mqtt

        self.msgs: list[tuple[str, bytes, bool]] = []
        self.acks: list[tuple[str, list[int]]] = []  # ("pub"|"sub", reason codes)
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=client_id or f"rec-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(user, USERS[user])

        def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
            self.connack = reason
            if not reason.is_failure and topic:
                c.subscribe(topic, qos=1)
            ready.set()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            with self.lock:
                self.msgs.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        def on_ack(kind: str) -> Any:
            def cb(c: Any, u: Any, mid: Any, codes: Any, props: Any) -> None:
                with self.lock:
                    self.acks.append((kind, [int(r.value) for r in (codes if isinstance(codes, list) else [codes])]))
            return cb

        self.client.on_connect, self.client.on_message = on_connect, on_message
        self.client.on_publish, self.client.on_subscribe = on_ack("pub"), on_ack("sub")
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert ready.wait(10), "no CONNACK"
        time.sleep(0.2)  # let the SUBACK and the retained messages land

    def of(self, node: str, leaf: str) -> list[tuple[bytes, bool]]:
        t = TOPICS.node(node, leaf)
        with self.lock:
            return [(p, r) for topic, p, r in self.msgs if topic == t]

    def running(self, node: str = NODE) -> int | None:
        states = [json.loads(p) for p, _ in self.of(node, "state") if p]
        return ((states[-1].get("model") or {}).get("version")) if states else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def ejabberd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEjabberd]:
    ej = LocalEjabberd(tmp_path_factory.mktemp("ejabberd"), users=USERS, fleet_acl=True).start()
    print(f"\nejabberd booted in {ej.boot_seconds:.2f} s (MQTT port answering)")
    yield ej
    ej.stop()


class Node:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, version: int, recorder: Recorder) -> None:
        self.proc, self.log, self.version, self.rec = proc, log, version, recorder

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _node_config(tmp: Path, broker: LocalEjabberd, bundle: Path, trusted: Path, video: Path) -> Path:
    """tests/helpers_nodes' node config (4 fps video, CPU, 1 s telemetry, quick trial), logged in as the node."""
    cfg = node_config(NODE, tmp, broker.url, bundle, trusted, video)
    url = f'url = "{broker.url}"'
    text = cfg.read_text()
    assert url in text
    cfg.write_text(text.replace(url, f'{url}\nusername = "{NODE}"\npassword = "{USERS[NODE]}"\nkeepalive_s = 10'))
    return cfg


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, ejabberd: LocalEjabberd, trained_bundle: Path,
         trained_bundle_keys: Path) -> Iterator[Node]:
    """One real `edge-agent run` under node credentials, running the trained bundle (v1)."""
    from builder.data.synth import make_video

    tmp = tmp_path_factory.mktemp("node")
    m = Bundle.load(trained_bundle).manifest
    video = tmp / "camera.avi"
    make_video(video, n_frames=40, size=(320, 240), fps=4, classes=list(m.class_names), seed=5, write_json=False)
    log = tmp / f"{NODE}.log"
    rec = Recorder(ejabberd)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                 str(_node_config(tmp, ejabberd, trained_bundle, trained_bundle_keys, video))],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    n = Node(proc, log, m.version, rec)
    try:
        assert wait_for(lambda: rec.running() == m.version, 120), n.tail() + ejabberd.log_text()[-2000:]
        yield n
    finally:
        rec.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_node_state_is_retained_and_telemetry_flows_live(node: Node, ejabberd: LocalEjabberd) -> None:
    rec = node.rec
    assert wait_for(lambda: rec.of(NODE, "telemetry") and rec.of(NODE, "detections"), 20), node.tail()
    assert [p for p, _ in rec.of(NODE, "availability")][-1] == b"online"
    late = Recorder(ejabberd)  # connects after the fact: only what the broker retained
    try:
        assert wait_for(lambda: late.of(NODE, "state") and late.of(NODE, "availability"), 5), late.msgs
        assert all(retained for _, retained in late.of(NODE, "state") + late.of(NODE, "availability"))
        assert late.of(NODE, "availability")[0][0] == b"online" and late.running() == node.version
        # telemetry goes out every second: what arrives now is live, never a retained copy
        assert wait_for(lambda: late.of(NODE, "telemetry"), 10), node.tail()
        assert not [r for _, r in late.of(NODE, "telemetry") if r]
    finally:
        late.close()


def test_acl_confines_another_node(node: Node, ejabberd: LocalEjabberd) -> None:
    """node-b's credentials: no write on node-a's topics, no wildcard read of the fleet, no takeover of
    node-a's session with node-a's client id; a wrong password is refused."""
    other = Recorder(ejabberd, OTHER, client_id=f"edge-agent-{NODE}", topic="edgefleet/node/+/state")
    try:
        other.client.publish(TOPICS.node(NODE, "state"), b"{}", qos=1, retain=True)
        other.client.publish(TOPICS.node(OTHER, "state"), b"{}", qos=1)
        assert wait_for(lambda: len([a for a in other.acks if a[0] == "pub"]) == 2, 5), other.acks
        with other.lock:
            (sub,), pubs = [a[1] for a in other.acks if a[0] == "sub"], [a[1][0] for a in other.acks if a[0] == "pub"]
        assert sub[0] >= 0x80, "wildcard read of other nodes' topics was granted"
        assert pubs[0] >= 0x80 and pubs[1] < 0x80, pubs  # refused on node-a's topic, accepted on its own
        assert not other.of(NODE, "state")
        time.sleep(1.0)
        assert node.proc.poll() is None and [p for p, _ in node.rec.of(NODE, "availability")][-1] == b"online"
        assert node.rec.running() == node.version  # the refused retained state never replaced node-a's
    finally:
        other.close()
    import paho.mqtt.client as mqtt

    bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id="bad-password")
    bad.username_pw_set(NODE, "wrong")
    refused: list[Any] = []
    bad.on_connect = lambda c, u, f, reason, p: refused.append(reason)
    bad.connect(ejabberd.host, ejabberd.port)
    bad.loop_start()
    try:
        assert wait_for(lambda: refused, 5) and refused[0].is_failure, refused
    finally:
        bad.loop_stop()


def test_v5_command_and_dashboard_link(node: Node, ejabberd: LocalEjabberd) -> None:
    from builder.dashboard.link import FleetLink
    from builder.dashboard.state import FleetState
    from builder.rollout.link import RolloutLink

    link = RolloutLink(ejabberd.url, TOPICS, username=ADMIN, password=USERS[ADMIN]).start()
    try:
        resp = link.command(NODE, {"command": "status"}, timeout=15)
        assert resp is not None and resp.ok and resp.node == NODE, resp
        assert wait_for(lambda: (s := link.snapshot(NODE)) is not None and s.online
                        and s.running_version == node.version, 5)
    finally:
        link.stop()
    state = FleetState()
    fleet = FleetLink(ejabberd.url_for(ADMIN), state).start()
    try:
        assert wait_for(lambda: (v := state.node(NODE)) is not None and v.online and v.model_version == node.version
                        and v.telemetry is not None, 10), state.node(NODE)
    finally:
        fleet.stop()


def test_announcement_then_rollout_update_the_node(node: Node, ejabberd: LocalEjabberd, trained_bundle: Path,
                                                   trained_bundle_key: Path, tmp_path: Path) -> None:
    from agent.protocol.manifest import Target
    from builder.fleet.publish import publish_bundle

    with FileServer(tmp_path / "www") as http:
        v2 = make_variant(trained_bundle, tmp_path / "v2", trained_bundle_key, node.version + 1)
        publish_bundle(v2, ejabberd.url, Target(), trained_bundle_key, http_base=http.base_url,
                       upload_dir=http.root, username=ADMIN, password=USERS[ADMIN])
        assert wait_for(lambda: node.rec.running() == node.version + 1, 90), node.tail()

        v3 = make_variant(trained_bundle, tmp_path / "v3", trained_bundle_key, node.version + 2)
        state_dir = tmp_path / "rollouts"
        cmd = [sys.executable, "-m", "builder.cli", "rollout"]
        out = subprocess.run([*cmd, "start", str(v3), "--broker", ejabberd.url, "--username", ADMIN,
                              "--key", str(trained_bundle_key), "--http-base", http.base_url, "--upload",
                              str(http.root), "--waves", "1", "--soak", "2", "--max-latency-ratio", "4",
                              "--discover", "3", "--state-dir", str(state_dir)], cwd=ROOT, capture_output=True,
                             text=True, timeout=240,
                             env={**os.environ, "EDGE_MQTT_PASSWORD": USERS[ADMIN], "PYTHONUNBUFFERED": "1"})
        assert out.returncode == 0, out.stdout + out.stderr + node.tail()
    st = json.loads(subprocess.run([*cmd, "status", "--json", "--state-dir", str(state_dir)], cwd=ROOT,
                                   capture_output=True, text=True, timeout=60, check=True).stdout)
    assert st["phase"] == "completed" and st["nodes"][NODE]["status"] == "healthy", st
    assert st["nodes"][NODE]["baseline"]["p95_ms"], st["nodes"]  # judged on its real telemetry
    assert wait_for(lambda: node.rec.running() == node.version + 2, 15), node.tail()
    print("\n" + "\n".join(st["events"]))


def test_empty_retained_message_clears_and_is_delivered_live(ejabberd: LocalEjabberd) -> None:
    """How the rollout clears a per-node announcement, Home Assistant configs are removed and a shadow run is
    stopped: an empty retained publish reaches live subscribers and leaves nothing for later ones."""
    from agent.protocol.manifest import Target

    topic = TOPICS.announce(Target(kind="node", value="node-zz"))
    admin = Recorder(ejabberd, topic=topic)
    try:
        for payload in (b'{"v": 1}', b""):
            admin.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
        assert wait_for(lambda: [p for t, p, _ in admin.msgs if t == topic] == [b'{"v": 1}', b""], 5), admin.msgs
    finally:
        admin.close()
    late = Recorder(ejabberd, topic=topic)
    try:
        time.sleep(0.5)
        assert not late.msgs
    finally:
        late.close()


def test_kill_9_fires_the_last_will(node: Node, ejabberd: LocalEjabberd) -> None:
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    t0 = time.monotonic()
    assert wait_for(lambda: [p for p, _ in node.rec.of(NODE, "availability")][-1] == b"offline", 20), \
        ejabberd.log_text()[-2000:]
    print(f"\nlast will 'offline' {time.monotonic() - t0:.2f} s after the daemon died")
    late = Recorder(ejabberd)
    try:
        assert wait_for(lambda: late.of(NODE, "availability"), 5)
        assert late.of(NODE, "availability") == [(b"offline", True)]  # the will was retained
    finally:
        late.close()
    ejabberd.stop()  # retained messages live in ejabberd's Mnesia spool: they survive a broker restart
    ejabberd.start()
    after = Recorder(ejabberd)
    try:
        assert wait_for(lambda: after.of(NODE, "availability") and after.of(NODE, "state"), 5), after.msgs
        assert after.of(NODE, "availability") == [(b"offline", True)] and after.running() == node.rec.running()
    finally:
        after.close()
