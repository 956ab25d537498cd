"""This process's CPU, memory and uptime for the telemetry message (psutil when present, else /proc)."""

from __future__ import annotations

import os
import time
from typing import Any


class ProcessStats:
    """CPU % (of one core), RSS and uptime of this process; psutil when present, else /proc."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last_wall = time.monotonic()
        self._last_cpu = self._cpu_seconds()
        try:
            import psutil

            self._proc: Any = psutil.Process()
        except ImportError:  # psutil is in the agent extra, but keep working without it
            self._proc = None

    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def cpu_percent(self) -> float:
        now, cpu = time.monotonic(), self._cpu_seconds()
        dt = now - self._last_wall
        pct = 100.0 * (cpu - self._last_cpu) / dt if dt > 0 else 0.0
        self._last_wall, self._last_cpu = now, cpu
        return round(pct, 1)

    def rss_mb(self) -> float | None:
        if self._proc is not None:
            return round(self._proc.memory_info().rss / 1e6, 1)
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
            return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
        except (OSError, ValueError, IndexError):
            return None

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started, 1)
