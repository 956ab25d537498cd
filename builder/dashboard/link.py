"""The dashboard's MQTT connection: subscribes to every node topic and feeds a FleetState.

paho-mqtt 2.x with CallbackAPIVersion.VERSION2; the callbacks only parse and update memory (never block).
The broker URL follows agent.config.BrokerConfig: mqtt://, mqtts://, ws://, wss://, with optional user:pass@.
"""

from __future__ import annotations

import ssl
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from agent.config import BrokerConfig
from builder.dashboard.state import CAMERA_LEAVES, LEAVES, FleetState


class LinkError(RuntimeError):
    pass


def make_client(url: str, client_id: str, ca_file: Path | None = None) -> tuple[mqtt.Client, BrokerConfig]:
    """A configured (not yet connected) paho client for `url`; raise LinkError on a bad URL."""
    try:
        cfg = BrokerConfig(url=url, ca_file=ca_file)
    except ValidationError as exc:
        raise LinkError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         transport=cfg.transport)
    u = urlparse(url)
    if u.username:
        client.username_pw_set(unquote(u.username), unquote(u.password) if u.password else None)
    if cfg.transport == "websockets":
        client.ws_set_options(path=cfg.ws_path)
    if cfg.tls:
        client.tls_set(ca_certs=str(ca_file) if ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(1, 10)
    return client, cfg


class FleetLink:
    """Connects, subscribes to {prefix}/node/+/{leaf} for every leaf we draw (per-camera ones too:
    {prefix}/node/+/camera/+/detections), and keeps reconnecting."""

    def __init__(self, url: str, state: FleetState, client_id: str | None = None,
                 ca_file: Path | None = None, leaves: tuple[str, ...] = LEAVES + CAMERA_LEAVES) -> None:
        self.state = state
        self.leaves = leaves
        self.client, self.cfg = make_client(url, client_id or f"edge-dashboard-{uuid.uuid4().hex[:8]}", ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.error: str | None = None

    def start(self, timeout: float = 10.0) -> FleetLink:
        try:
            self.client.connect(self.cfg.host, self.cfg.port, keepalive=30)
        except OSError as exc:
            raise LinkError(f"cannot reach broker {self.cfg.url}: {exc}") from None
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise LinkError(f"broker {self.cfg.url} did not accept the connection: {self.error or 'timeout'}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
                timeout: float = 10.0) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")

    # paho callbacks (network thread): no blocking work here.
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if reason.is_failure:
            self.error = str(reason)
            self.state.set_broker(False, self.error)
            return
        self.error = None
        client.subscribe([(self.state.topics.all_nodes(leaf), 1) for leaf in self.leaves])
        self.connected.set()
        self.state.set_broker(True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        self.connected.clear()
        if reason.is_failure:
            self.error = str(reason)
        self.state.set_broker(False, self.error or "disconnected")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.state.handle(msg.topic, bytes(msg.payload))
