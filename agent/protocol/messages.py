"""Pydantic models for every MQTT payload (JSON). Telemetry lives in agent.protocol.telemetry."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Msg(BaseModel):
    # Extra keys are ignored so newer builders/agents can add fields without breaking older peers.
    model_config = ConfigDict(extra="ignore")


class Availability(StrEnum):
    """Plain-text retained payload on the availability topic (also the MQTT last will)."""

    ONLINE = "online"
    OFFLINE = "offline"


class Detection(_Msg):
    box: tuple[float, float, float, float] = Field(description="normalized [x1, y1, x2, y2] in the frame")
    class_id: int
    class_name: str
    score: float


class DetectionsMessage(_Msg):
    node: str
    ts: datetime = Field(default_factory=utcnow)
    frame_ts: float = Field(description="capture time, seconds since the epoch")
    frame_index: int
    model_name: str
    model_version: int
    backend: str
    detections: list[Detection]
    camera: str | None = Field(default=None, description="the camera's name (multi-camera nodes); None: older agents")


class ModelRef(_Msg):
    name: str
    version: int


class NodeState(_Msg):
    """Retained on the state topic: what a dashboard needs to draw the node's row."""

    node: str
    ts: datetime = Field(default_factory=utcnow)
    status: Literal["starting", "running", "degraded", "error", "stopped"]
    reason: str | None = None
    agent_version: str
    backend: str | None = None
    device: str | None = None
    model: ModelRef | None = None
    previous_model: ModelRef | None = None
    last_update: UpdateStatus | None = None
    camera: str | None = None
    groups: list[str] = Field(default_factory=list)


class UpdateState(StrEnum):
    ANNOUNCED = "announced"
    VERIFYING = "verifying"
    DOWNLOADING = "downloading"
    ACTIVATING = "activating"
    TRIAL = "trial"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    FAILED = "failed"


class UpdateStatus(_Msg):
    """Retained on the update topic; every transition of the update state machine is published."""

    node: str
    ts: datetime = Field(default_factory=utcnow)
    name: str | None = None
    version: int | None = None
    state: UpdateState
    reason: str | None = None
    progress: float | None = Field(default=None, ge=0, le=1)
    running_version: int | None = None


class Announcement(_Msg):
    """Retained on an announce topic. `manifest` is the exact signed bytes, base64-encoded."""

    manifest_b64: str
    key_id: str
    signature_b64: str
    base_url: str = Field(description="URL of the bundle directory; file paths are relative to it")

    def manifest_bytes(self) -> bytes:
        return base64.b64decode(self.manifest_b64, validate=True)

    def signature(self) -> bytes:
        return base64.b64decode(self.signature_b64, validate=True)


class CommandRequest(_Msg):
    """Sent to the node's command topic with MQTT v5 response topic + correlation data.

    `unpin` is new: older agents know only `pin` without a version (still accepted, a deprecated alias), so
    builders send that form to reach every agent version."""

    command: Literal["rollback", "pin", "unpin", "inventory", "status"]
    version: int | None = None


class CommandResponse(_Msg):
    node: str
    command: str
    ok: bool
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


NodeState.model_rebuild()
