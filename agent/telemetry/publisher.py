"""The telemetry publisher thread: one `Telemetry` message per interval, never blocking on the network."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.protocol.telemetry import Telemetry
from agent.telemetry.collector import TelemetryCollector

log = logging.getLogger(__name__)


class TelemetryPublisher(threading.Thread):
    """Every `interval_s`, snapshot the collector and hand the JSON to `publish(payload_bytes)`.

    `publish` is the MQTT wrapper's non-blocking enqueue: while the broker is away it buffers up to its
    bound (oldest dropped first), so this thread never blocks on the network.
    """

    def __init__(self, collector: TelemetryCollector, publish: Callable[[bytes], Any], interval_s: float) -> None:
        super().__init__(name="telemetry", daemon=True)
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.collector = collector
        self.publish = publish
        self.interval_s = interval_s
        self._stop_evt = threading.Event()
        self.published = 0
        self.last: Telemetry | None = None

    def publish_now(self) -> Telemetry:
        msg = self.collector.snapshot(reset=True)
        self.last = msg
        self.publish(msg.model_dump_json(exclude_none=False).encode())
        self.published += 1
        return msg

    def run(self) -> None:
        # first window starts now; the first message comes after one interval
        self.collector.snapshot(reset=True)
        while not self._stop_evt.wait(self.interval_s):
            try:
                self.publish_now()
            except Exception:  # noqa: BLE001 - keep publishing whatever one window did
                log.exception("telemetry publish failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout)
