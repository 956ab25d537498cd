"""MQTT hardening against a real Mosquitto running the shipped docs/mosquitto/edge-fleet.conf + .acl (issue 13):

- on the node listener the broker makes the user name the client id: no node can take over another's session
  (nor fire its last will), whatever client id it asks for;
- admin tools (dashboard, rollout, fleet CLI) connect on the admin listener with ids of their own, side by
  side with the nodes and each other; node credentials do not work there;
- a node cannot publish on another node's cmd, update, availability, state or Home Assistant discovery, nor
  on announcements or the keyring (which it may read);
- a node answers a command only under the requester's reply subtree ({prefix}/admin/{client}/replies/...) or
  on its own cmd/response.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for
from helpers_broker import shipped_mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import BrokerConfig
from agent.protocol.topics import Topics
from agent.service.commands import CommandsHandler
from agent.service.mqtt import MqttClient, probe_broker

ROOT = Path(__file__).resolve().parents[1]
T = Topics("edgefleet")
NODES = {"node-a": "pw-a", "node-b": "pw-b"}
ADMINS = {"fleet-admin": "pw-admin"}


@dataclass
class ShippedBroker:
    node_port: int
    admin_port: int
    plain_port: int
    ca: Path
    log: Path

    def node_cfg(self, user: str, password: str | None = None, client_id: str | None = None) -> BrokerConfig:
        return BrokerConfig(url=f"mqtts://127.0.0.1:{self.node_port}", username=user,
                            password=password or NODES[user], ca_file=self.ca, client_id=client_id)

    def admin(self, client_id: str, port: int | None = None) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set("fleet-admin", ADMINS["fleet-admin"])
        c.tls_set(ca_certs=str(self.ca))
        return c


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[ShippedBroker]:
    acl = (ROOT / "docs" / "mosquitto" / "edge-fleet.acl").read_text()
    with shipped_mosquitto(tmp_path, acl, NODES, ADMINS) as ports:
        yield ShippedBroker(ports.node_port, ports.admin_port, ports.plain_port, ports.ca, ports.log)


class Watcher:
    """An admin tool on the admin listener, subscribed to everything (fleet + discovery)."""

    def __init__(self, broker: ShippedBroker, client_id: str | None = None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.disconnects = 0
        subscribed = threading.Event()
        c = broker.admin(client_id or f"edge-dashboard-{uuid.uuid4().hex[:8]}")
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe([("edgefleet/#", 1), ("homeassistant/#", 1)])
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = lambda cl, u, m: self.got.append((m.topic, bytes(m.payload)))
        c.on_disconnect = lambda *a: setattr(self, "disconnects", self.disconnects + 1)
        c.connect("127.0.0.1", broker.admin_port)
        c.loop_start()
        self.client = c
        assert subscribed.wait(10)

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p in self.got if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _daemon_like(broker: ShippedBroker, node: str, client_id: str | None = None) -> MqttClient:
    """What the daemon does: its client id, its last will on its availability topic, "online" retained."""
    c = MqttClient(broker.node_cfg(node), client_id=client_id or f"edge-agent-{node}",
                   availability_topic=T.availability(node))
    c.start()
    assert c.wait_connected(10), c.last_error
    assert c.publish(T.availability(node), b"online", qos=1, retain=True)
    return c


def test_client_id_takeover_is_refused(shipped: ShippedBroker) -> None:
    watcher = Watcher(shipped)
    b = _daemon_like(shipped, "node-b")
    assert wait_for(lambda: b"online" in watcher.payloads(T.availability("node-b")))
    intruders = []
    try:
        # node A asks for every id node B could be known by: its user name, the daemon's id, a doctor's id
        for cid in ("node-b", "edge-agent-node-b", "node-b-doctor-1"):
            a = MqttClient(shipped.node_cfg("node-a", client_id=cid), client_id=cid,
                           availability_topic=T.availability("node-a"))
            a.start()
            assert a.wait_connected(10), a.last_error
            intruders.append(a)
        time.sleep(0.5)
        assert b.connected and b.counters.disconnects == 0
        assert b"offline" not in watcher.payloads(T.availability("node-b")), "node B's last will fired"
        log = shipped.log.read_text()
        assert "New client connected" in log and "as node-a" in log
        assert "as node-b-doctor-1" not in log and "as edge-agent-node-b" not in log
    finally:
        for a in intruders:
            a.stop()
        b.stop()
        watcher.close()


def test_admin_tools_work_side_by_side_with_the_daemon(shipped: ShippedBroker) -> None:
    b = _daemon_like(shipped, "node-b")
    tools = [Watcher(shipped, "edge-dashboard-1"), Watcher(shipped, "edge-rollout-1"), Watcher(shipped, "edge-fleet-1")]
    try:
        assert b.publish(T.state("node-b"), b'{"s":1}', qos=1, retain=True)
        for w in tools:
            assert wait_for(lambda w=w: bool(w.payloads(T.state("node-b"))))  # type: ignore[misc]
        # a short-lived CLI run on top, connecting and leaving
        cli = shipped.admin("edge-fleet-cli-2")
        cli.connect("127.0.0.1", shipped.admin_port)
        cli.loop_start()
        cli.publish("edgefleet/announce/all", b"{}", qos=1).wait_for_publish(5)
        cli.disconnect()
        cli.loop_stop()
        time.sleep(0.5)
        assert [w.disconnects for w in tools] == [0, 0, 0]
        assert b.connected and b.counters.disconnects == 0
        assert all(b"offline" not in w.payloads(T.availability("node-b")) for w in tools)
    finally:
        b.stop()
        for w in tools:
            w.close()


def test_node_credentials_do_not_work_on_the_admin_listener(shipped: ShippedBroker) -> None:
    codes: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-agent-node-b", protocol=mqtt.MQTTv5)
    c.username_pw_set("node-a", NODES["node-a"])
    c.tls_set(ca_certs=str(shipped.ca))
    c.on_connect = lambda cl, u, f, rc, p: codes.append(str(rc))
    c.connect("127.0.0.1", shipped.admin_port)
    c.loop_start()
    try:
        assert wait_for(lambda: bool(codes), 5)
        assert codes[0] == "Not authorized"
    finally:
        c.loop_stop()


def test_probe_broker_never_uses_the_daemons_client_id(broker_factory) -> None:  # type: ignore[no-untyped-def]
    """`edge-agent check` on a node with broker.client_id set: the daemon stays connected, its will stays quiet."""
    broker = broker_factory()
    cfg = BrokerConfig(url=broker.url, client_id="edge-agent-cam-1")
    daemon = MqttClient(cfg, client_id="ignored", availability_topic=T.availability("cam-1"))
    daemon.start()
    try:
        assert daemon.wait_connected(10)
        assert probe_broker(cfg, timeout=5) is None
        time.sleep(0.3)
        assert daemon.connected and daemon.counters.disconnects == 0
        assert "edge-agent-check-" in broker.log_path.read_text()
    finally:
        daemon.stop()


@pytest.mark.parametrize("leaf", ["cmd", "update", "availability", "state", "telemetry", "cmd/response"])
def test_node_cannot_publish_on_another_nodes_topics(shipped: ShippedBroker, leaf: str) -> None:
    watcher = Watcher(shipped)
    a = _daemon_like(shipped, "node-a")
    try:
        assert a.publish(T.node("node-b", leaf), b'{"spoof":1}', qos=1, retain=leaf != "cmd")
        assert wait_for(lambda: a.counters.denied == 1), a.counters
        time.sleep(0.2)
        assert not watcher.payloads(T.node("node-b", leaf))
    finally:
        a.stop()
        watcher.close()


@pytest.mark.parametrize("topic", [
    "homeassistant/sensor/node-b/fps/config", "homeassistant/update/node-b/model/config",
    "edgefleet/announce/all", "edgefleet/keyring", "edgefleet/rollout/replies/x", "edgefleet/node/node-b",
])
def test_node_cannot_publish_discovery_announcements_or_keyring_of_others(shipped: ShippedBroker, topic: str) -> None:
    watcher = Watcher(shipped)
    a = _daemon_like(shipped, "node-a")
    try:
        assert a.publish("homeassistant/sensor/node-a/fps/config", b"{}", qos=1)  # its own discovery: allowed
        assert a.publish(topic, b'{"evil":1}', qos=1, retain=True)
        assert wait_for(lambda: a.counters.denied == 1), a.counters
        assert wait_for(lambda: bool(watcher.payloads("homeassistant/sensor/node-a/fps/config")))
        assert not watcher.payloads(topic)
    finally:
        a.stop()
        watcher.close()


def test_node_reads_the_keyring(shipped: ShippedBroker) -> None:
    admin = shipped.admin("edge-keys-1")
    admin.connect("127.0.0.1", shipped.admin_port)
    admin.loop_start()
    admin.publish(T.keyring(), b'{"keyring":1}', qos=1, retain=True).wait_for_publish(5)
    a = _daemon_like(shipped, "node-a")
    got: list[bytes] = []
    try:
        a.subscribe(T.keyring(), lambda m: got.append(bytes(m.payload)), qos=1)
        assert wait_for(lambda: got == [b'{"keyring":1}'])
    finally:
        a.stop()
        admin.disconnect()
        admin.loop_stop()


class _StubUpdater:
    def inventory(self) -> dict[str, Any]:
        return {"versions": [1]}

    def status(self) -> dict[str, Any]:
        return {"status": "idle"}

    def submit_command(self, req: Any, reply: Any) -> None:
        raise AssertionError("not used")


def _request(admin: mqtt.Client, node: str, response_topic: str, corr: bytes) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = corr
    admin.publish(T.command(node), json.dumps({"command": "inventory"}), qos=1, properties=props).wait_for_publish(5)


def test_command_replies_only_under_the_admin_reply_subtree(shipped: ShippedBroker) -> None:
    from agent.service.commands import paho_responder

    watcher = Watcher(shipped, "edge-dashboard-w")
    a = _daemon_like(shipped, "node-a")
    handler = CommandsHandler("node-a", T, _StubUpdater(), paho_responder(a._client))  # type: ignore[arg-type]
    a.subscribe(handler.topic, handler.on_message, qos=1)
    admin = shipped.admin("edge-dashboard-x")
    admin.connect("127.0.0.1", shipped.admin_port)
    admin.loop_start()
    try:
        time.sleep(0.3)
        good = T.admin_replies("edge-dashboard-x") + "/1"
        _request(admin, "node-a", good, b"c-good")
        assert wait_for(lambda: bool(watcher.payloads(good)))
        assert json.loads(watcher.payloads(good)[0])["result"] == {"versions": [1]}
        foreign = [T.state("node-b"), T.availability("node-a"), "edgefleet/announce/all", "elsewhere/replies",
                   "edgefleet/admin/x/other", "edgefleet/admin/+/replies", "edgefleet/rollout/replies/r"]
        for i, topic in enumerate(foreign):
            _request(admin, "node-a", topic, f"c-{i}".encode())
        _request(admin, "node-a", good, b"c-last")  # in order after the refused ones
        assert wait_for(lambda: len(watcher.payloads(good)) == 2)
        assert all(b'"command"' not in p for t in foreign for p in watcher.payloads(t))
        # answered on the node's own cmd/response instead, correlation kept
        assert wait_for(lambda: len(watcher.payloads(T.response("node-a"))) == len(foreign))
        assert a.counters.denied == 0  # refused by the node itself, not merely by the broker
    finally:
        admin.disconnect()
        admin.loop_stop()
        a.stop()
        watcher.close()


def test_reply_topic_rule() -> None:
    assert T.is_reply_topic("edgefleet/admin/dash/replies", "n1")
    assert T.is_reply_topic("edgefleet/admin/dash/replies/a/b", "n1")
    assert T.is_reply_topic("edgefleet/node/n1/cmd/response", "n1")
    for bad in ("edgefleet/node/n2/cmd/response", "edgefleet/admin/dash", "edgefleet/admin/#/replies",
                "edgefleet/admin/dash/replies/+", "edgefleet/admin//replies", "other/admin/dash/replies",
                "edgefleet/admin/dash/replies/" + "x" * 600):
        assert not T.is_reply_topic(bad, "n1"), bad



def test_the_real_admin_tools_side_by_side(shipped: ShippedBroker) -> None:
    """Two dashboards (FleetLink) and a rollout runner (RolloutLink) on the admin listener, a node on the node
    listener: all stay connected, and the dashboards see the node online throughout."""
    from builder.dashboard.link import FleetLink
    from builder.dashboard.state import FleetState
    from builder.rollout.link import RolloutLink

    url = f"mqtts://fleet-admin:{ADMINS['fleet-admin']}@127.0.0.1:{shipped.admin_port}"
    b = _daemon_like(shipped, "node-b")
    states = [FleetState(T), FleetState(T)]
    dashboards = [FleetLink(url, s, ca_file=shipped.ca).start() for s in states]
    rollout = RolloutLink(url, T, ca_file=shipped.ca).start()
    try:
        for s in states:
            assert wait_for(lambda s=s: (v := s.node("node-b")) is not None and v.online is True)  # type: ignore[misc]
        assert b.publish(T.state("node-b"), b'{"node":"node-b","status":"running","agent_version":"1"}', qos=1)
        time.sleep(0.5)
        assert all(d.connected.is_set() for d in dashboards)
        assert b.connected and b.counters.disconnects == 0
        assert all(s.node("node-b").online is True for s in states)  # type: ignore[union-attr]
    finally:
        rollout.stop()
        for d in dashboards:
            d.stop()
        b.stop()
