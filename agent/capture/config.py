"""The `[capture]` section (off by default): which frames to keep, how many, where they go."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class CaptureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    dir: Path | None = Field(default=None, description="the ring's directory (default: <state_dir>/capture)")
    band: tuple[float, float] = Field(default=(0.3, 0.6), description="keep a frame whose top score is inside")
    close_iou: float = Field(default=0.5, gt=0, le=1, description="two boxes of different classes overlapping this")
    close_margin: float = Field(default=0.1, ge=0, le=1, description="... with scores this close: the classes are close (0: off)")
    disagreement: float = Field(default=0.3, ge=0, le=1, description="keep when the shadow disagrees at least this")
    drift_threshold: float = Field(default=0.25, gt=0, le=1,
                                   description="total variation distance of the score histogram vs the reference")
    drift_window: int = Field(default=200, ge=10, description="detection scores compared with the reference")
    rate_per_min: float = Field(default=6.0, gt=0, description="frames kept per minute at most (token bucket)")
    burst: int = Field(default=3, ge=1, description="frames kept back to back before the rate applies")
    max_frames: int = Field(default=500, ge=1)
    max_bytes: int = Field(default=200_000_000, ge=10_000, description="image + metadata bytes in the ring")
    jpeg_quality: int = Field(default=90, ge=10, le=100)
    collector_url: str | None = Field(default=None, description="the builder's collector, http(s)://host:port")
    credential_file: Path | None = Field(default=None, description="this node's collector token (one line)")
    ca_file: Path | None = Field(default=None, description="CA certificate of an https collector")
    upload_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError(f"band must be [low, high] with 0 <= low < high <= 1, not {list(v)}")
        return v

    @field_validator("collector_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"collector_url must be http(s)://host:port, not {v!r}")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _credential(self) -> CaptureConfig:
        if self.collector_url and self.credential_file is None:
            raise ValueError("collector_url needs credential_file (the token from `edge-builder collect add-node`)")
        return self
