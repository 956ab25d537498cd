"""A bound on the publishes paho has accepted but not finished, through paho's public message info only.

paho's own `max_queued_messages_set` bounds QoS>0 messages only; a QoS 0 publish on a slow link waits in
its packet queue without limit. Every publish returns an `MQTTMessageInfo` that paho marks published once
the packet is written (QoS 0) or acknowledged (QoS>0), or marks failed when a reconnect discards it. Keeping
those infos and counting the unfinished ones gives the outbox length without reading paho's internals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode

_WAITING = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN)


def finished(info: MQTTMessageInfo) -> bool:
    """Sent/acknowledged, or given up by paho (e.g. a QoS 0 packet lost with the connection)."""
    return info.rc not in _WAITING or info.is_published()


class Outbox:
    """Publishes in flight, at most `bound`: `submit` refuses (returns None) instead of queueing more."""

    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError("bound must be >= 1")
        self.bound = bound
        self._pending: list[MQTTMessageInfo] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return len(self._pending)

    def _prune(self) -> None:
        self._pending = [i for i in self._pending if not finished(i)]

    def submit(self, send: Callable[[], MQTTMessageInfo]) -> MQTTMessageInfo | None:
        """Call `send` (one paho publish) unless `bound` publishes are unfinished; None when full."""
        with self._lock:
            # prune only at the bound: while the link keeps up this stays O(1) per publish
            if len(self._pending) >= self.bound:
                self._prune()
                if len(self._pending) >= self.bound:
                    return None
            info = send()
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._pending.append(info)
            return info

    def track(self, info: MQTTMessageInfo) -> None:
        """Count a publish made outside `submit` (re-sends after a reconnect), so it takes its share."""
        with self._lock:
            if len(self._pending) >= self.bound:
                self._prune()
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._pending.append(info)
