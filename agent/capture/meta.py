"""What a captured frame carries, on the node and at the collector (both sides import this model)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.protocol.messages import Detection
from agent.protocol.topics import check_segment

#: Frame ids: capture time in ns (so names sort by age) and 8 random hex digits. Nothing else is a valid
#: id, so an id is always a safe file name (no separators, no dots) on the node and at the collector.
FRAME_ID = re.compile(r"^[0-9]{19,20}-[0-9a-f]{8}$")
REASONS = ("band", "close_classes", "disagreement", "drift")
META_SCHEMA = 1


def check_frame_id(v: str) -> str:
    if not FRAME_ID.match(v):
        raise ValueError(f"not a frame id: {v[:60]!r}")
    return v


class CaptureMeta(BaseModel):
    """One captured frame's metadata: `<id>.json` beside `<id>.jpg`."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = META_SCHEMA
    id: str
    node: str
    camera: str
    frame_ts: float = Field(description="capture time, seconds since the epoch")
    frame_index: int = 0
    captured_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model_name: str
    model_version: int
    backend: str = ""
    reasons: list[str]
    detections: list[Detection]
    width: int
    height: int
    image_format: str = Field(default="jpg", pattern="^(jpg|png)$")
    image_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    image_size: int = Field(ge=1)
    top_score: float | None = None
    disagreement: float | None = None
    drift: float | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_frame_id(v)

    @field_validator("node", "camera")
    @classmethod
    def _segment(cls, v: str) -> str:
        return check_segment(v, "node or camera name")

    @field_validator("reasons")
    @classmethod
    def _reasons(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in REASONS]
        if bad or not v:
            raise ValueError(f"reasons must be some of {', '.join(REASONS)}, not {v}")
        return v
