"""How announcements reach the update worker cheaply, and when the node may judge their expiry.

- `AnnouncementInbox`: the newest pending announcement per topic (a retained topic only ever means its
  latest message), a bounded number of topics, oversized payloads never kept. A flood costs O(topics)
  memory, whatever its length.
- `RejectLimiter`: a token bucket over rejection reports (status, log): a flood of bad announcements is
  summarised, not echoed; rejections before a download never touch the disk (see Updater).
- `ClockGate`: an expiry can only be judged by a synchronized clock (a Pi without RTC boots at the time
  fake-hwclock saved); the sync state comes from agent.system.clock, cached briefly.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from agent.system.clock import ClockStatus

MAX_ANNOUNCEMENT_BYTES = 256 * 1024  # a manifest is a few kB; the rest would only cost memory
MAX_TOPICS = 8  # a node subscribes to all + its groups + itself; more pending topics means abuse
REPORT_BURST = 5  # rejections reported back to back ...
REPORT_EVERY_S = 6.0  # ... then one per this many seconds (the others are counted)


class AnnouncementInbox:
    """The newest pending announcement per topic. `put` says whether the worker needs a new job."""

    def __init__(self, max_topics: int = MAX_TOPICS, max_bytes: int = MAX_ANNOUNCEMENT_BYTES) -> None:
        self.max_topics, self.max_bytes = max_topics, max_bytes
        self._pending: OrderedDict[str, bytes | int] = OrderedDict()
        self._lock = threading.Lock()
        self.dropped = 0  # superseded or evicted before the worker saw them

    def put(self, topic: str, payload: bytes) -> bool:
        # Oversized: keep only its size (the worker rejects it without ever holding the bytes).
        item: bytes | int = bytes(payload) if len(payload) <= self.max_bytes else len(payload)
        with self._lock:
            fresh = topic not in self._pending
            if not fresh:
                self.dropped += 1
            self._pending[topic] = item
            self._pending.move_to_end(topic)
            while len(self._pending) > self.max_topics:
                self._pending.popitem(last=False)
                self.dropped += 1
            return fresh

    def take(self, topic: str) -> bytes | int | None:
        """The newest payload of `topic` (an int: the size of one too big to keep), None if none left."""
        with self._lock:
            return self._pending.pop(topic, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


class RejectLimiter:
    """Token bucket: `allow()` → (report this one?, how many went unreported before it)."""

    def __init__(self, burst: int = REPORT_BURST, every_s: float = REPORT_EVERY_S,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.every_s, self.now = burst, every_s, now
        self.tokens = float(burst)
        self.last = now()
        self.suppressed = 0

    def allow(self) -> tuple[bool, int]:
        t = self.now()
        self.tokens = min(float(self.burst), self.tokens + (t - self.last) / self.every_s)
        self.last = t
        if self.tokens < 1.0:
            self.suppressed += 1
            return False, 0
        self.tokens -= 1.0
        n, self.suppressed = self.suppressed, 0
        return True, n


ClockSource = Callable[[], ClockStatus]
ClockPolicy = Literal["required", "unknown_ok", "off"]


class ClockGate:
    """May this node compare an expiry with its clock now? Readings are cached for `ttl_s`."""

    def __init__(self, source: ClockSource, policy: ClockPolicy, ttl_s: float = 5.0) -> None:
        self.source, self.policy, self.ttl_s = source, policy, ttl_s
        self._cached: tuple[float, ClockStatus] | None = None

    def status(self) -> ClockStatus:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= self.ttl_s:
            self._cached = (now, self.source())
        return self._cached[1]

    def why_not(self) -> str | None:
        """None when expiries can be judged now, else why not (for the held status)."""
        if self.policy == "off":
            return None
        st = self.status()
        if st.synchronized or (st.synchronized is None and self.policy == "unknown_ok"):
            return None
        state = "not synchronized" if st.synchronized is False else "of unknown sync state"
        return f"clock {state} ({st.detail})"


__all__ = ["AnnouncementInbox", "ClockGate", "ClockSource", "RejectLimiter"]
