"""Fleet telemetry collector: per-stage latency histograms, event rates and process stats per window.

The pipeline calls `TelemetryCollector.record_frame({stage: seconds}, detections, model_version)` once per frame
and `count(...)` for events; `snapshot()` closes a window into a `Telemetry` message (agent.telemetry.publisher sends it every
`interval_s`). Sensor readers (power, temperatures, MQTT link) are plain callables, guarded by `_safe`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.protocol.telemetry import (
    STAGES,
    CameraTelemetry,
    Counters,
    MqttLink,
    PowerInfo,
    Rates,
    Telemetry,
    Temperatures,
    ThrottleInfo,
)
from agent.telemetry.detections import DetectionTally
from agent.telemetry.histogram import LatencyHistogram
from agent.telemetry.process import ProcessStats

log = logging.getLogger(__name__)


@dataclass
class NodeInfo:
    """What the daemon knows about itself; updated by the service as it changes."""

    status: str | None = "starting"
    backend: str | None = None
    device: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    camera_state: str | None = None


@dataclass
class _Window:
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=dict)


class TelemetryCollector:
    """Thread-safe sink for per-frame timings and events; `snapshot()` closes a window."""

    RATE_EVENTS = ("frames_captured", "frames_inferred", "frames_dropped", "inference_errors")

    def __init__(
        self,
        node: str,
        agent_version: str,
        *,
        power: Callable[[], PowerInfo | None] | None = None,
        temperatures: Callable[[], Temperatures] | None = None,
        throttle: Callable[[], ThrottleInfo | None] | None = None,
        mqtt_stats: Callable[[], MqttLink] | None = None,
        camera_totals: Callable[[], tuple[int, int]] | None = None,
        cameras: Callable[[float, bool], dict[str, CameraTelemetry]] | None = None,
    ) -> None:
        self.node = node
        self.agent_version = agent_version
        self.info = NodeInfo()
        self.hist: dict[str, LatencyHistogram] = {s: LatencyHistogram() for s in STAGES}
        self.totals: dict[str, int] = dict.fromkeys(self.RATE_EVENTS, 0)
        self._window = _Window()
        self._lock = threading.Lock()
        self.proc = ProcessStats()
        self.power = power
        self.temperatures = temperatures
        self.throttle = throttle
        self.mqtt_stats = mqtt_stats
        #: cumulative (frames captured, frames dropped) from the camera; windows use the deltas
        self.camera_totals = camera_totals
        self._cam_last = (0, 0)
        #: per-camera figures for a window of `dt` seconds (multi-camera nodes)
        self.cameras = cameras
        #: invoke time accumulated in the window: the Coral's duty cycle for the power estimate
        self._busy_s = 0.0
        #: detections per frame, per model version (what the rollout's detection gate reads)
        self.detections = DetectionTally()

    # -- recording (called from the pipeline threads) --------------------------------------------
    def record_stage(self, stage: str, seconds: float) -> None:
        h = self.hist.get(stage)
        if h is None:
            h = self.hist.setdefault(stage, LatencyHistogram())
        h.record(seconds * 1000.0)
        if stage == "invoke":
            with self._lock:
                self._busy_s += seconds

    def record_frame(self, stages: Mapping[str, float], detections: Sequence[Any] | None = None,
                     model_version: int | None = None) -> None:
        """One inferred frame: {stage: seconds}, and its detections when the caller has them. Counts it as inferred."""
        for stage, sec in stages.items():
            self.record_stage(stage, sec)
        if detections is not None:
            self.detections.record(detections, model_version)
        self.count("frames_inferred")

    def count(self, event: str, n: int = 1) -> None:
        with self._lock:
            self.totals[event] = self.totals.get(event, 0) + n
            self._window.counts[event] = self._window.counts.get(event, 0) + n

    def duty_cycle(self) -> float:
        """Fraction of the current window the accelerator spent in invoke (0..1)."""
        with self._lock:
            dt = time.monotonic() - self._window.started
            return min(1.0, self._busy_s / dt) if dt > 0 else 0.0

    # -- reading (publisher thread) ---------------------------------------------------------------
    def snapshot(self, reset: bool = True) -> Telemetry:
        now = time.monotonic()
        with self._lock:
            window = self._window
            dt = max(now - window.started, 1e-6)
            wc = dict(window.counts)
            if reset:
                self._window = _Window(started=now)
                self._busy_s = 0.0
        self._camera_window(wc, reset)
        latency = {s: h.summary(reset=reset) for s, h in self.hist.items()}
        rates = Rates(
            camera_fps=round(wc.get("frames_captured", 0) / dt, 2),
            inference_fps=round(wc.get("frames_inferred", 0) / dt, 2),
            dropped_fps=round(wc.get("frames_dropped", 0) / dt, 2),
        )
        power = _safe(self.power)
        if power is not None and power.watts is not None and rates.inference_fps > 0:
            # energy per inference = average power / inference rate (J → mJ)
            power.energy_per_inference_mj = round(power.watts / rates.inference_fps * 1000.0, 3)
        temps = _safe(self.temperatures) or Temperatures()
        info = self.info
        return Telemetry(
            node=self.node,
            interval_s=round(dt, 3),
            agent_version=self.agent_version,
            uptime_s=self.proc.uptime_s(),
            status=info.status,  # type: ignore[arg-type]
            backend=info.backend,
            device=info.device,
            model_name=info.model_name,
            model_version=info.model_version,
            camera_state=info.camera_state,
            latency=latency,
            rates=rates,
            counters=Counters(**{k: self.totals.get(k, 0) for k in self.RATE_EVENTS}),
            cpu_percent=self.proc.cpu_percent(),
            rss_mb=self.proc.rss_mb(),
            power=power,
            temperatures=temps,
            throttle=_safe(self.throttle),
            mqtt=_safe(self.mqtt_stats) or MqttLink(),
            cameras=self._cameras(dt, reset),
            detections=self.detections.snapshot(reset),
        )

    def _cameras(self, dt: float, reset: bool) -> dict[str, CameraTelemetry]:
        read = self.cameras
        return (_safe(lambda: read(dt, reset)) if read is not None else None) or {}

    def _camera_window(self, wc: dict[str, int], reset: bool) -> None:
        """Window counts of captured/dropped frames from the camera's cumulative totals (when it has them)."""
        if self.camera_totals is None:
            return
        cam = _safe(self.camera_totals)
        if cam is None:
            return
        captured, dropped = cam
        wc["frames_captured"] = captured - self._cam_last[0]
        wc["frames_dropped"] = dropped - self._cam_last[1]
        self.totals["frames_captured"], self.totals["frames_dropped"] = captured, dropped
        if reset:
            self._cam_last = (captured, dropped)


def _safe(fn: Callable[[], Any] | None) -> Any:
    """Sensor readers must never take telemetry (or inference) down: log and report nothing."""
    if fn is None:
        return None
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a broken sensor is reported, not fatal
        log.warning("telemetry source %s failed: %s", getattr(fn, "__qualname__", fn), exc)
        return None
