"""Per-stage latency histograms: bounded memory whatever the frame rate, percentiles within ±0.5 %.

A histogram is a fixed array of log-spaced buckets, so recording is O(1) and a window of any length
costs the same memory; `summary()` turns one into the `StageLatency` the telemetry message carries.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from agent.protocol.telemetry import StageLatency


class LatencyHistogram:
    """Log-bucketed histogram of durations (ms) with percentiles; O(1) record, fixed memory.

    Buckets grow by `growth` (1 % by default) from `lo_ms` to `hi_ms`, so a percentile is within
    ±0.5 % of the true sample value (reported as the bucket's geometric centre, clamped to the
    observed min/max). Values outside the range land in the first/last bucket.
    """

    def __init__(self, lo_ms: float = 0.01, hi_ms: float = 120_000.0, growth: float = 1.01) -> None:
        if not (0 < lo_ms < hi_ms and growth > 1):
            raise ValueError("need 0 < lo_ms < hi_ms and growth > 1")
        self._log_lo = math.log(lo_ms)
        self._log_g = math.log(growth)
        self._n = int(math.ceil((math.log(hi_ms) - self._log_lo) / self._log_g)) + 1
        self._counts = np.zeros(self._n, dtype=np.int64)
        self._lock = threading.Lock()
        self._reset_stats()

    def _reset_stats(self) -> None:
        self.count = 0
        self.total_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = 0.0

    def _index(self, ms: float) -> int:
        if ms <= 0:
            return 0
        i = int((math.log(ms) - self._log_lo) / self._log_g)
        return min(max(i, 0), self._n - 1)

    def record(self, ms: float) -> None:
        if not math.isfinite(ms):
            return
        i = self._index(ms)
        with self._lock:
            self._counts[i] += 1
            self.count += 1
            self.total_ms += ms
            self.min_ms = min(self.min_ms, ms)
            self.max_ms = max(self.max_ms, ms)

    def _centre(self, i: int) -> float:
        return math.exp(self._log_lo + (i + 0.5) * self._log_g)

    def percentiles(self, qs: tuple[float, ...] = (50, 95, 99)) -> list[float | None]:
        with self._lock:
            return self._percentiles_locked(qs)

    def _percentiles_locked(self, qs: tuple[float, ...]) -> list[float | None]:
        if self.count == 0:
            return [None for _ in qs]
        cum = np.cumsum(self._counts)
        out: list[float | None] = []
        for q in qs:
            # nearest-rank definition: the smallest value with at least q % of samples at or below it
            rank = max(1, math.ceil(q / 100.0 * self.count))
            i = int(np.searchsorted(cum, rank))
            out.append(min(max(self._centre(i), self.min_ms), self.max_ms))
        return out

    def summary(self, reset: bool = False) -> StageLatency:
        with self._lock:
            p50, p95, p99 = self._percentiles_locked((50, 95, 99))
            s = StageLatency(
                count=self.count,
                p50_ms=_r(p50),
                p95_ms=_r(p95),
                p99_ms=_r(p99),
                mean_ms=_r(self.total_ms / self.count) if self.count else None,
                max_ms=_r(self.max_ms) if self.count else None,
            )
            if reset:
                self._counts[:] = 0
                self._reset_stats()
            return s


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)
