"""Read one node's telemetry payload (agent.protocol.telemetry.Telemetry) into the figures the dashboard draws.

A payload that is not JSON, or that the Telemetry model rejects, is malformed (builder.dashboard.payloads): the
caller marks that node faulty with the reason and keeps the rest of the fleet running.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agent.protocol.telemetry import CameraTelemetry, StageLatency, Telemetry
from builder.dashboard.payloads import MalformedPayload, parse_model

# The inference call is what a model update changes; fall back to end-to-end if a node times only that.
LATENCY_STAGES = ("invoke", "end_to_end")
__all__ = ["CameraReading", "MalformedPayload", "TelemetryReading", "read_camera", "read_telemetry"]


class CameraReading(BaseModel):
    """One camera of a multi-camera node, as its node's telemetry reports it (issue 16)."""

    state: str | None = None  # streaming | stalled | reconnecting | …
    device: str | None = None  # where its frames run: usb:0, cpu
    camera_fps: float = 0.0
    fps: float = 0.0  # inference
    dropped_fps: float = 0.0
    frames_dropped: int = 0
    p50_ms: float | None = None  # model time
    p95_ms: float | None = None
    e2e_p95_ms: float | None = None


def read_camera(c: CameraTelemetry) -> CameraReading:
    lat, e2e = c.latency, c.end_to_end
    return CameraReading(state=c.state, device=c.device, camera_fps=c.camera_fps, fps=c.inference_fps,
                         dropped_fps=c.dropped_fps, frames_dropped=c.frames_dropped,
                         p50_ms=lat.p50_ms if lat else None, p95_ms=lat.p95_ms if lat else None,
                         e2e_p95_ms=e2e.p95_ms if e2e else None)


class TelemetryReading(BaseModel):
    """What the dashboard keeps from one telemetry message (None: the node did not report it)."""

    ts: float  # node clock, seconds since the epoch (staleness is measured against it)
    interval_s: float
    status: str | None = None
    fps: float | None = None
    camera_fps: float | None = None
    stage: str | None = None  # which stage p50/p95 describe
    p50_ms: float | None = None
    p95_ms: float | None = None
    e2e_p95_ms: float | None = None
    power_w: float | None = None
    power_estimated: bool | None = None
    power_source: str | None = None
    temp_c: float | None = None
    tpu_temp_c: float | None = None
    throttled: bool | None = None
    cpu_percent: float | None = None
    rss_mb: float | None = None
    backend: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    inference_errors: int | None = None
    # Per camera; the node row carries them (NodeView.cameras), so they are not sent twice.
    cameras: dict[str, CameraReading] = Field(default_factory=dict, exclude=True)


def read_telemetry(payload: bytes) -> TelemetryReading:
    """Parse and validate one telemetry payload; raise MalformedPayload with a short reason."""
    t = parse_model(Telemetry, payload, "telemetry")
    stage_name, stage = next(((s, t.latency[s]) for s in LATENCY_STAGES if s in t.latency),
                             (None, StageLatency(count=0)))
    e2e = t.latency.get("end_to_end")
    return TelemetryReading(
        ts=t.ts.timestamp(),
        interval_s=t.interval_s,
        status=t.status,
        fps=t.rates.inference_fps,
        camera_fps=t.rates.camera_fps,
        stage=stage_name,
        p50_ms=stage.p50_ms,
        p95_ms=stage.p95_ms,
        e2e_p95_ms=e2e.p95_ms if e2e else None,
        power_w=t.power.watts if t.power else None,
        power_estimated=t.power.estimated if t.power else None,
        power_source=t.power.source if t.power else None,
        temp_c=t.temperatures.cpu_c,
        tpu_temp_c=t.temperatures.tpu_max_c,
        throttled=(t.throttle.throttled or t.throttle.under_voltage) if t.throttle else None,
        cpu_percent=t.cpu_percent,
        rss_mb=t.rss_mb,
        backend=t.backend,
        model_name=t.model_name,
        model_version=t.model_version,
        inference_errors=t.counters.inference_errors,
        cameras={name: read_camera(c) for name, c in t.cameras.items()},
    )
