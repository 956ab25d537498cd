"""The agent's MQTT client: paho-mqtt 2.x (VERSION2 callbacks, MQTT v5) that never blocks inference.

- publish() returns at once: paho's network thread sends; its queue is bounded (outbox_size) and a full
  queue or a dead link drops the message and counts it instead of waiting.
- Retained messages (availability, state, update status) are remembered per topic and re-sent after every
  reconnect, so a broker restart never leaves the node looking offline.
- Availability: LWT "offline" retained; "online" retained on every connect; "offline" on clean stop.
- Reconnects are paho's, with capped exponential backoff (reconnect_min_s .. reconnect_max_s).
- Subscriptions are remembered and renewed on every connect. Callbacks run on paho's thread and must not
  block: handlers should hand work to their own thread.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import BrokerConfig
from agent.protocol.messages import Availability
from agent.service.outbox import Outbox

log = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]


@dataclass
class MqttCounters:
    connects: int = 0
    reconnects: int = 0
    disconnects: int = 0
    published: int = 0
    dropped: int = 0
    received: int = 0
    # issue 7 (broker outage, ACL): offline buffer overflow (oldest dropped first) and broker refusals
    buffer_dropped: int = 0
    denied: int = 0


class MqttClient:
    def __init__(self, cfg: BrokerConfig, client_id: str, availability_topic: str | None = None) -> None:
        self.cfg = cfg
        self.availability_topic = availability_topic
        self.counters = MqttCounters()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._subs: dict[str, tuple[int, MessageHandler]] = {}
        self._on_connect_hooks: list[Callable[[], None]] = []
        self._started = False
        self.last_error: str | None = None
        # --- issue 7: bounded offline buffer for `publish(..., buffer=True)` (telemetry) and the topics of
        # in-flight QoS>0 publishes, so a broker refusal (MQTT v5 PUBACK reason code, e.g. 0x87 Not
        # authorized from an ACL) can be logged with its topic.
        self._offline: deque[tuple[str, bytes, int]] = deque()
        self._inflight: dict[int, str] = {}
        self._outbox = Outbox(cfg.outbox_size)
        self.last_denied: tuple[str, str] | None = None

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or client_id,
            protocol=mqtt.MQTTv5,
            transport=cfg.transport,
        )
        if cfg.transport == "websockets":
            c.ws_set_options(path=cfg.ws_path)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.secret_password())
        if cfg.tls:
            c.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
                cert_reqs=ssl.CERT_NONE if cfg.tls_insecure else ssl.CERT_REQUIRED,
            )
            if cfg.tls_insecure:
                c.tls_insecure_set(True)
        if availability_topic:
            c.will_set(availability_topic, Availability.OFFLINE.value, qos=1, retain=True)
        c.max_queued_messages_set(cfg.outbox_size)
        c.reconnect_delay_set(min_delay=max(1, int(cfg.reconnect_min_s)), max_delay=max(1, int(cfg.reconnect_max_s)))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self._client = c

    # -------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect in the background (returns at once; paho retries until the broker answers)."""
        if self._started:
            return
        self._started = True
        try:
            self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            self.last_error = str(exc)
            log.warning("mqtt connect to %s failed: %s", self.cfg.url, exc)
        self._client.loop_start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, timeout: float = 2.0) -> None:
        """Publish "offline" (retained) if connected, then disconnect and stop the network thread."""
        if not self._started:
            return
        if self.availability_topic and self.connected:
            info = self._client.publish(self.availability_topic, Availability.OFFLINE.value, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self._started = False
        self._connected.clear()

    def add_on_connect(self, hook: Callable[[], None]) -> None:
        """Run `hook` (on paho's thread; keep it short) after every successful connect."""
        self._on_connect_hooks.append(hook)

    # -------------------------------------------------------------------------------------------- publish

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, buffer: bool = False
    ) -> bool:
        """Queue a message without blocking. Returns False when it was dropped (counted).

        buffer=True (telemetry): while the link is down keep it in a bounded buffer (cfg.offline_buffer;
        the oldest is dropped first and counted) and send it after the reconnect.
        """
        data = payload.encode() if isinstance(payload, str) else payload
        if retain:
            with self._lock:
                self._retained[topic] = (data, qos)
        if not self.connected:
            if buffer and not retain:
                with self._lock:
                    self._offline.append((topic, data, qos))
                    while len(self._offline) > self.cfg.offline_buffer:
                        self._offline.popleft()
                        self.counters.buffer_dropped += 1
                return False
            if not retain:  # retained ones go out on reconnect
                self.counters.dropped += 1
            return False
        # paho bounds only QoS>0 messages (max_queued_messages); the outbox bounds QoS 0 too, so a slow
        # link costs dropped detections, not memory.
        info = self._outbox.submit(lambda: self._client.publish(topic, data, qos=qos, retain=retain))
        if info is None or info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.counters.dropped += 1
            return False
        self._track(info.mid, topic, qos)
        self.counters.published += 1
        return True

    @property
    def buffered(self) -> int:
        """Messages waiting in the offline buffer."""
        return len(self._offline)

    @property
    def in_flight(self) -> int:
        """Publishes handed to paho and not yet sent (QoS 0) or acknowledged (QoS>0); new ones stop at outbox_size."""
        return len(self._outbox)

    def _track(self, mid: int, topic: str, qos: int) -> None:
        if qos > 0:
            with self._lock:
                self._inflight[mid] = topic
                if len(self._inflight) > 4 * self.cfg.outbox_size:  # acks lost with a dead link
                    self._inflight.pop(next(iter(self._inflight)))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        with self._lock:
            topic = self._inflight.pop(mid, "?")
        if reason.is_failure:
            self.counters.denied += 1
            self.last_denied = (topic, str(reason))
            if self.counters.denied in (1, 10, 100) or self.counters.denied % 1000 == 0:
                log.warning("broker refused publish on %s: %s (%d refusals so far; check the ACL)",
                            topic, reason, self.counters.denied)

    def publish_model(self, topic: str, model: Any, qos: int = 0, retain: bool = False) -> bool:
        """Publish a pydantic model as JSON."""
        return self.publish(topic, model.model_dump_json(), qos=qos, retain=retain)

    def request(self, topic: str, payload: bytes | str, properties: Properties | None = None, qos: int = 1) -> bool:
        """Publish with MQTT v5 properties (response topic, correlation data) without blocking."""
        if not self.connected:
            self.counters.dropped += 1
            return False
        info = self._client.publish(topic, payload, qos=qos, properties=properties)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # -------------------------------------------------------------------------------------------- subscribe

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1) -> None:
        """Subscribe now (if connected) and after every reconnect. `handler` runs on paho's thread."""
        with self._lock:
            self._subs[topic] = (qos, handler)
        if self.connected:
            self._client.subscribe(topic, qos=qos)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subs.pop(topic, None)
        if self.connected:
            self._client.unsubscribe(topic)

    # -------------------------------------------------------------------------------------------- callbacks

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused connection: {reason}"
            log.warning("mqtt: %s", self.last_error)
            return
        self.counters.connects += 1
        if self.counters.connects > 1:
            self.counters.reconnects += 1
        self.last_error = None
        with self._lock:
            subs = list(self._subs.items())
            retained = list(self._retained.items())
        for topic, (qos, _) in subs:
            client.subscribe(topic, qos=qos)
        if self.availability_topic:
            client.publish(self.availability_topic, Availability.ONLINE.value, qos=1, retain=True)
        for topic, (data, qos) in retained:
            self._outbox.track(client.publish(topic, data, qos=qos, retain=True))
        with self._lock:  # telemetry buffered during the outage, oldest first
            backlog, self._offline = list(self._offline), deque()
        for topic, data, qos in backlog:
            info = client.publish(topic, data, qos=qos)
            self._outbox.track(info)
            self._track(info.mid, topic, qos)
        self._connected.set()
        for hook in self._on_connect_hooks:
            try:
                hook()
            except Exception:  # a faulty hook must not kill paho's thread
                log.exception("mqtt on_connect hook failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = f"cannot connect to {self.cfg.url} (refused or unreachable); retrying"

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if self._connected.is_set():
            self.counters.disconnects += 1
        self._connected.clear()
        if reason is not None and getattr(reason, "is_failure", False):
            self.last_error = f"disconnected: {reason}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.counters.received += 1
        with self._lock:
            handlers = [h for t, (_, h) in self._subs.items() if mqtt.topic_matches_sub(t, msg.topic)]
        for h in handlers:
            try:
                h(msg)
            except Exception:
                log.exception("mqtt handler for %s failed", msg.topic)


def probe_broker(cfg: BrokerConfig, timeout: float = 5.0) -> str | None:
    """Connect once and disconnect; None when it worked, else the reason (for `edge-agent check`).

    Always under an id of its own, never broker.client_id: a broker drops the older connection of a duplicate
    client id, which would kick the running daemon and fire its last will."""
    own_id = f"edge-agent-check-{secrets.token_hex(4)}"
    client = MqttClient(cfg.model_copy(update={"client_id": None}), client_id=own_id)
    client.start()
    try:
        if client.wait_connected(timeout):
            return None
        return client.last_error or f"no answer from {cfg.url} within {timeout:g} s"
    finally:
        client.stop()
