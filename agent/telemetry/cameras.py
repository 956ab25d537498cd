"""Per-camera telemetry: rates from each feed's cumulative counters, latency histograms fed frame by frame,
the camera's state and the device its frames ran on (agent.inference.feeds.Feed)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from agent.protocol.telemetry import CameraTelemetry
from agent.telemetry.histogram import LatencyHistogram


class CameraWindows:
    def __init__(self, feeds: Sequence[Any]) -> None:
        self.feeds = list(feeds)
        self._lat = {f.name: LatencyHistogram() for f in self.feeds}
        self._e2e = {f.name: LatencyHistogram() for f in self.feeds}
        self._last: dict[str, tuple[int, int, int]] = {f.name: (0, 0, 0) for f in self.feeds}
        self._lock = threading.Lock()

    def record(self, camera: str, model_s: float, end_to_end_s: float) -> None:
        if camera in self._lat:
            self._lat[camera].record(model_s * 1000.0)
            self._e2e[camera].record(end_to_end_s * 1000.0)

    def snapshot(self, dt: float, reset: bool = True) -> dict[str, CameraTelemetry]:
        out: dict[str, CameraTelemetry] = {}
        with self._lock:
            for f in self.feeds:
                now = (f.camera.frames, f.camera.dropped, f.counters.inferred)
                last = self._last[f.name]
                cap, drop, inf = (a - b for a, b in zip(now, last, strict=True))
                if reset:
                    self._last[f.name] = now
                out[f.name] = CameraTelemetry(
                    state=f.camera.state.value, device=f.device,
                    camera_fps=round(cap / dt, 2), inference_fps=round(inf / dt, 2), dropped_fps=round(drop / dt, 2),
                    frames_dropped=now[1],
                    latency=self._lat[f.name].summary(reset=reset), end_to_end=self._e2e[f.name].summary(reset=reset))
        return out
