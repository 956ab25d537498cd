"""A real Mosquitto with TLS, a password file and the shipped per-node ACL (docs/mosquitto/edge-fleet.acl).

Node A may publish only its own topics: publishing on node B's topics or on an announcement topic is refused
by the broker (MQTT v5 PUBACK 0x87), the agent's MQTT client detects and logs the refusal, and nothing
reaches a subscriber.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for as _wait
from helpers_broker import shipped_mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import BrokerConfig
from agent.protocol.topics import Topics
from agent.service.mqtt import MqttClient

ROOT = Path(__file__).resolve().parents[1]
ACL = (ROOT / "docs" / "mosquitto" / "edge-fleet.acl").read_text()
USERS = {"node-a": "pw-a", "node-b": "pw-b", "fleet-admin": "pw-admin"}
T = Topics("edgefleet")


class Watcher:
    """The operator's view: fleet-admin subscribed to everything under the prefix, over TLS."""

    def __init__(self, broker, topic: str = "edgefleet/#") -> None:  # type: ignore[no-untyped-def]
        self.got: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv5)
        c.username_pw_set("fleet-admin", USERS["fleet-admin"])
        c.tls_set(ca_certs=str(broker.ca_path))
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = lambda cl, u, m: self.got.append((m.topic, bytes(m.payload)))
        c.connect(broker.host, broker.tls_port)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10)

    def topics(self) -> set[str]:
        return {t for t, _ in self.got}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def secure_broker(broker_factory):  # type: ignore[no-untyped-def]
    return broker_factory(users=USERS, acl=ACL, tls=True)


def _node(broker, name: str, password: str | None = None) -> MqttClient:  # type: ignore[no-untyped-def]
    cfg = BrokerConfig(url=broker.tls_url, username=name, password=password or USERS[name], ca_file=broker.ca_path)
    c = MqttClient(cfg, client_id=f"edge-agent-{name}", availability_topic=T.availability(name))
    c.start()
    assert c.wait_connected(10), c.last_error
    return c


def test_node_cannot_publish_on_other_nodes_or_announcements(secure_broker, caplog) -> None:  # type: ignore[no-untyped-def]
    watcher = Watcher(secure_broker)
    a = _node(secure_broker, "node-a")
    try:
        caplog.set_level(logging.WARNING, logger="agent.service.mqtt")
        assert a.publish(T.telemetry("node-a"), b'{"ok":1}', qos=1)
        assert a.publish(T.telemetry("node-b"), b'{"spoof":1}', qos=1)
        assert a.publish(T.state("node-b"), b'{"spoof":1}', qos=1, retain=True)
        assert a.publish("edgefleet/announce/all", b'{"evil":1}', qos=1, retain=True)
        assert a.publish("edgefleet/announce/node/node-b", b'{"evil":1}', qos=1)
        assert _wait(lambda: a.counters.denied >= 4), a.counters
        assert _wait(lambda: T.telemetry("node-a") in watcher.topics())
        time.sleep(0.3)
        # only node A's own topics reached the operator
        assert {t for t in watcher.topics() if "node-b" in t or "/announce/" in t} == set()
        assert a.counters.denied == 4
        refused = [r.getMessage() for r in caplog.records if "refused publish" in r.getMessage()]
        assert refused and "Not authorized" in refused[0]
        assert a.last_denied is not None and a.last_denied[1] == "Not authorized"
        # the broker's own log agrees
        log = secure_broker.log_path.read_text()
        assert "Denied PUBLISH from edge-agent-node-a" in log and "edgefleet/announce/all" in log
    finally:
        a.stop()
        watcher.close()


def test_node_reads_announcements_but_not_other_nodes(secure_broker) -> None:  # type: ignore[no-untyped-def]
    admin = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="admin-pub", protocol=mqtt.MQTTv5)
    admin.username_pw_set("fleet-admin", USERS["fleet-admin"])
    admin.tls_set(ca_certs=str(secure_broker.ca_path))
    admin.connect(secure_broker.host, secure_broker.tls_port)
    admin.loop_start()
    admin.publish("edgefleet/announce/all", b"announce-v2", qos=1, retain=True).wait_for_publish(5)
    b = _node(secure_broker, "node-b")
    a = _node(secure_broker, "node-a")
    got_a: list[tuple[str, bytes]] = []
    try:
        a.subscribe("edgefleet/announce/#", lambda m: got_a.append((m.topic, bytes(m.payload))))
        a.subscribe(T.node("node-b", "#"), lambda m: got_a.append((m.topic, bytes(m.payload))))
        assert _wait(lambda: ("edgefleet/announce/all", b"announce-v2") in got_a)
        b.publish(T.telemetry("node-b"), b"private to b", qos=1)
        time.sleep(0.5)
        assert all(not t.startswith(T.node("node-b", "")) for t, _ in got_a), got_a
    finally:
        a.stop()
        b.stop()
        admin.loop_stop()
        admin.disconnect()


def test_wrong_password_and_untrusted_server_are_refused(secure_broker, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="agent.service.mqtt")
    cfg = BrokerConfig(url=secure_broker.tls_url, username="node-a", password="wrong", ca_file=secure_broker.ca_path)
    c = MqttClient(cfg, client_id="edge-agent-node-a-bad", availability_topic=T.availability("node-a"))
    c.start()
    try:
        assert not c.wait_connected(2)
        assert _wait(lambda: any("refused connection: Not authorized" in r.getMessage() for r in caplog.records), 5)
    finally:
        c.stop()
    # TLS certificate checking is on: a client that does not trust the CA cannot connect at all
    bad = MqttClient(BrokerConfig(url=secure_broker.tls_url, username="node-a", password=USERS["node-a"]),
                     client_id="edge-agent-no-ca")
    bad.start()
    try:
        assert not bad.wait_connected(2)
    finally:
        bad.stop()


def test_shipped_mosquitto_config_starts_and_enforces(tmp_path: Path) -> None:
    """docs/mosquitto/edge-fleet.conf itself (paths and ports moved into tmp): TLS works, anonymous is refused."""
    users = {"node-a": USERS["node-a"]}
    with shipped_mosquitto(tmp_path, ACL, users, {"fleet-admin": USERS["fleet-admin"]}) as ports:
        tls_port, plain_port = ports.node_port, ports.plain_port
        node = MqttClient(BrokerConfig(url=f"mqtts://127.0.0.1:{tls_port}", username="node-a", password=USERS["node-a"],
                                       ca_file=ports.ca), client_id="edge-agent-node-a", availability_topic=T.availability("node-a"))
        node.start()
        try:
            assert node.wait_connected(10), node.last_error
            assert node.publish(T.telemetry("node-a"), b"{}", qos=1)
            assert node.publish("edgefleet/announce/all", b"{}", qos=1)
            assert _wait(lambda: node.counters.denied == 1)
        finally:
            node.stop()
        anon = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv5)
        codes: list[str] = []
        anon.on_connect = lambda c, u, f, rc, p: codes.append(str(rc))
        anon.connect("127.0.0.1", plain_port)
        anon.loop_start()
        assert _wait(lambda: bool(codes), 5)
        anon.loop_stop()
        assert codes[0] == "Not authorized"

