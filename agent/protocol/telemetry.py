"""The periodic, non-retained telemetry payload on `{prefix}/node/{node}/telemetry` (see docs/TELEMETRY.md).

Field names are part of the contract: Home Assistant discovery (agent/telemetry/hass.py) and the fleet dashboard read
them by path (e.g. `latency.invoke.p95_ms`, `power.watts`), so rename nothing without updating both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.protocol.messages import utcnow

#: Pipeline stages timed per frame, in order.
STAGES: tuple[str, ...] = ("capture_wait", "preprocess", "invoke", "postprocess", "end_to_end")


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StageLatency(_Msg):
    """Latency of one stage over the last telemetry window (milliseconds)."""

    count: int = Field(ge=0, description="samples in the window")
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None


class Rates(_Msg):
    """Events per second over the last window."""

    camera_fps: float = 0.0
    inference_fps: float = 0.0
    dropped_fps: float = Field(default=0.0, description="stale frames replaced before inference")


class Counters(_Msg):
    """Totals since the agent started."""

    frames_captured: int = 0
    frames_inferred: int = 0
    frames_dropped: int = 0
    inference_errors: int = 0


class PowerInfo(_Msg):
    source: str = Field(description="hwmon:<chip> | vcgencmd_pmic | power_supply:<name> | estimated")
    estimated: bool = Field(description="true when no sensor was read and the figure is a model")
    watts: float | None = None
    energy_per_inference_mj: float | None = None
    detail: dict[str, float] = Field(default_factory=dict, description="per-rail watts, volts, amps")


class ThrottleInfo(_Msg):
    """Decoded `vcgencmd get_throttled` bits (Raspberry Pi firmware)."""

    raw: int
    under_voltage: bool = False
    freq_capped: bool = False
    throttled: bool = False
    soft_temp_limit: bool = False
    under_voltage_occurred: bool = False
    freq_capped_occurred: bool = False
    throttled_occurred: bool = False
    soft_temp_limit_occurred: bool = False


class Temperatures(_Msg):
    cpu_c: float | None = None
    tpu_c: dict[str, float] = Field(default_factory=dict, description="per Coral PCIe device, e.g. apex_0")
    tpu_max_c: float | None = None


class MqttLink(_Msg):
    reconnects: int = 0
    dropped_messages: int = Field(default=0, description="outbox overflow, oldest dropped first")
    queued_messages: int = 0
    denied_publishes: int = Field(default=0, description="publishes refused by the broker (ACL)")


class CameraTelemetry(_Msg):
    """One camera of a multi-camera node over the last window (issue 16)."""

    state: str | None = Field(default=None, description="streaming | stalled | reconnecting | …")
    device: str | None = Field(default=None, description="where its frames run: usb:0, pci:0, cpu")
    camera_fps: float = 0.0
    inference_fps: float = 0.0
    dropped_fps: float = Field(default=0.0, description="frames replaced before inference")
    frames_dropped: int = Field(default=0, description="total since start")
    latency: StageLatency | None = Field(default=None, description="model time (preprocess+invoke+postprocess)")
    end_to_end: StageLatency | None = Field(default=None, description="capture → detections")


class DetectionCounts(_Msg):
    """Detections per inferred frame over the last window: what the node acts on (after the score threshold, NMS
    and each camera's filter and zones), counted on every frame inferred without error, before the detections
    topic's rate limit and empty-frame skipping. Only frames of `model_version` (the latest model in the
    window) are counted, so a window that spans a model swap never mixes two models."""

    model_version: int | None = Field(default=None, description="the model whose frames are counted")
    frames: int = Field(default=0, ge=0, description="its frames inferred without error in the window")
    total: int = Field(default=0, ge=0, description="detections on those frames")
    per_frame: float | None = Field(default=None, description="total / frames; None without frames")
    empty_frames: int = Field(default=0, ge=0, description="frames without any detection")
    max_per_frame: int = Field(default=0, ge=0)
    by_class: dict[str, int] = Field(default_factory=dict, description="detections per class name in the window")
    frames_since_start: int = Field(default=0, ge=0, description="frames counted since the agent started")
    total_since_start: int = Field(default=0, ge=0, description="detections on them")


class Telemetry(_Msg):
    node: str
    ts: datetime = Field(default_factory=utcnow)
    interval_s: float = Field(description="length of the window the rates and percentiles cover")
    agent_version: str
    uptime_s: float
    status: Literal["starting", "running", "degraded", "error", "stopped"] | None = None
    backend: str | None = None
    device: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    camera_state: str | None = None
    latency: dict[str, StageLatency] = Field(default_factory=dict, description="keyed by STAGES")
    rates: Rates = Field(default_factory=Rates)
    counters: Counters = Field(default_factory=Counters)
    cpu_percent: float | None = Field(default=None, description="this process, 100 = one core")
    rss_mb: float | None = None
    power: PowerInfo | None = None
    temperatures: Temperatures = Field(default_factory=Temperatures)
    throttle: ThrottleInfo | None = None
    mqtt: MqttLink = Field(default_factory=MqttLink)
    cameras: dict[str, CameraTelemetry] = Field(default_factory=dict, description="per camera, keyed by name")
    detections: DetectionCounts | None = Field(default=None, description="per frame; None: an agent before issue 12")
