"""The MQTT outbox bound: a link that stops draining costs dropped (counted) messages, never memory.

A stalled "broker" on loopback accepts the connection, answers CONNACK and then stops reading, so the
client's socket buffers fill and publishes pile up in paho; MqttClient must refuse beyond `outbox_size`.
When the broker reads again the outbox drains and publishing works again.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from helpers import wait_for
from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode

from agent.config import BrokerConfig
from agent.service.mqtt import MqttClient
from agent.service.outbox import Outbox

CONNACK_V5 = bytes([0x20, 0x03, 0x00, 0x00, 0x00])  # session not present, success, no properties


class StalledBroker:
    """Accepts one client, acknowledges its CONNECT, then reads nothing until `drain()`."""

    def __init__(self) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.draining = threading.Event()
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        conn.recv(4096)  # CONNECT (small, one read)
        conn.sendall(CONNACK_V5)
        self.draining.wait()
        while data := conn.recv(1 << 20):
            self.received += len(data)

    def drain(self) -> None:
        self.draining.set()

    def close(self) -> None:
        self.draining.set()
        self.srv.close()


@pytest.fixture
def stalled() -> Iterator[StalledBroker]:
    b = StalledBroker()
    yield b
    b.close()


def test_slow_link_drops_and_counts_beyond_the_outbox(stalled: StalledBroker) -> None:
    bound = 5
    client = MqttClient(BrokerConfig(url=f"mqtt://127.0.0.1:{stalled.port}", outbox_size=bound), "outbox-test")
    client.start()
    try:
        assert client.wait_connected(5)
        payload = b"x" * (1 << 20)  # 1 MB: a few fill the loopback socket buffers
        sent = [client.publish("edgefleet/node/n/detections", payload) for _ in range(60)]
        # far more than fits in the kernel buffers + the outbox: the rest is dropped and counted
        assert client.counters.dropped > 0
        assert client.counters.published + client.counters.dropped == len(sent)
        assert sum(sent) == client.counters.published
        assert client.in_flight <= bound
        # the link drains: the outbox empties and publishing works again
        stalled.drain()
        assert wait_for(lambda: client.in_flight == 0, 30)
        assert client.publish("edgefleet/node/n/detections", b"after")
    finally:
        client.stop(timeout=0.5)


class Info(MQTTMessageInfo):
    """A message info the test completes itself (paho completes real ones from its network thread)."""

    def __init__(self, mid: int) -> None:
        super().__init__(mid)
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self.done = False

    def is_published(self) -> bool:
        return self.done


def test_outbox_counts_unfinished_publishes_only() -> None:
    box = Outbox(2)
    a, b = Info(1), Info(2)
    assert box.submit(lambda: a) is a and box.submit(lambda: b) is b
    assert box.submit(lambda: Info(3)) is None  # full: `send` is not even called
    a.done = True  # written/acknowledged
    c = Info(4)
    assert box.submit(lambda: c) is c and len(box) == 2
    b.rc = MQTTErrorCode.MQTT_ERR_CONN_LOST  # paho gave it up with the connection
    assert len(box) == 1
    refused = Info(5)
    refused.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE  # paho's own QoS>0 bound: not in flight
    assert box.submit(lambda: refused) is refused and len(box) == 1
