"""The inference sections of the agent config: [backend] (one section per backend, Frigate-style), [detect]
and [publish], and `EngineConfig`, the part of the whole config the engine reads (AgentConfig satisfies it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.camera.config import CameraConfig
from agent.inference.backends.base import AcceleratorSettings, BackendSettings
from agent.inference.backends.cpu import CpuBackend, CpuConfig
from agent.inference.backends.edgetpu import EdgeTpuBackend, EdgeTpuConfig
from agent.inference.backends.registry import BACKENDS, BackendSettingsUnion, default_settings
from agent.protocol.topics import check_segment

log = logging.getLogger("agent.config")  # deprecation warnings read as config messages


class BackendConfig(BaseModel):
    """Which backends run the bundle, Frigate-detector style: one section per backend under
    `[backend.detectors.<name>]`, told apart by `type` ("edgetpu", "cpu"; the name is the type when
    `type` is omitted). `prefer` names the type to run; the CPU is the fallback either way. A type
    without a section runs with its defaults.

    The old flat form (`[backend.edgetpu]`, `[backend.cpu]`, EDGE_AGENT_BACKEND__CPU__THREADS) still
    loads, with a deprecation warning: it is validated in place (errors name `backend.edgetpu.device`)
    and folded into `detectors`.
    """

    model_config = ConfigDict(extra="forbid")

    prefer: str = "edgetpu"
    detectors: dict[str, BackendSettingsUnion] = Field(default_factory=dict)
    legacy_edgetpu: EdgeTpuConfig | None = Field(default=None, alias="edgetpu", exclude=True, repr=False)
    legacy_cpu: CpuConfig | None = Field(default=None, alias="cpu", exclude=True, repr=False)

    @field_validator("prefer")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"prefer must be one of {', '.join(BACKENDS)}, not {v!r}")
        return v

    @field_validator("detectors", mode="before")
    @classmethod
    def _type_from_name(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"type": k, **d} if isinstance(d, dict) and "type" not in d else d for k, d in v.items()}
        return v

    @model_validator(mode="after")
    def _complete(self) -> BackendConfig:
        legacy = [s for s in (self.legacy_edgetpu, self.legacy_cpu) if s is not None]
        if legacy:
            old = ", ".join(f"[backend.{s.type}]" for s in legacy)
            log.warning("config: %s is deprecated: write [backend.detectors.<name>] with type = \"<type>\" "
                        "(docs/agent.example.toml); loading it as such", old)
        seen: dict[str, str] = {}
        for name, d in self.detectors.items():
            if d.type in seen:
                raise ValueError(f"detectors {seen[d.type]!r} and {name!r} are both of type {d.type!r}; one per type")
            seen[d.type] = name
        for s in legacy:  # what the old section sets wins over a new section of its type (e.g. an old env var)
            name = seen.get(s.type, s.type)
            base = self.detectors.get(name)
            self.detectors[name] = base.model_copy(update={k: getattr(s, k) for k in s.model_fields_set}) if base else s
        for type_ in BACKENDS:
            if not any(d.type == type_ for d in self.detectors.values()):
                self.detectors[type_] = default_settings(type_)
        self.legacy_edgetpu = self.legacy_cpu = None
        return self

    def settings(self, type_: str) -> BackendSettings:
        """The section of backend `type_` (every registered type has one after validation)."""
        return next(d for d in self.detectors.values() if d.type == type_)

    def preferred(self) -> AcceleratorSettings | None:
        """The preferred backend's settings when it is an enabled accelerator; None = the CPU only."""
        s = self.settings(self.prefer)
        return s if isinstance(s, AcceleratorSettings) and s.enabled else None

    @property
    def edgetpu(self) -> EdgeTpuConfig:
        s = self.settings(EdgeTpuBackend.name)
        assert isinstance(s, EdgeTpuConfig)
        return s

    @property
    def cpu(self) -> CpuConfig:
        s = self.settings(CpuBackend.name)
        assert isinstance(s, CpuConfig)
        return s


class DetectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score_threshold: float = Field(default=0.4, ge=0, le=1)
    iou_threshold: float = Field(default=0.5, ge=0, le=1)
    class_agnostic_nms: bool = Field(
        default=True, description="boxes overlapping at IoU > iou_threshold are one object even across classes: "
        "only the highest score is reported (off: one report per class, as COCO evaluation counts)")
    max_detections: int = Field(default=100, ge=1)
    classes: list[str] | None = Field(default=None, description="report only these class names")
    target_fps: float | None = Field(default=None, gt=0, description="cap inference rate; None = as fast as possible")


class DetectOverrides(BaseModel):
    """A camera's own detection settings; unset keys inherit [detect]."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: float | None = Field(default=None, ge=0, le=1)
    class_agnostic_nms: bool | None = None
    classes: list[str] | None = None

    def apply(self, base: DetectConfig) -> DetectConfig:
        return base.model_copy(update=self.model_dump(exclude_none=True))


Polygon = list[tuple[float, float]]


class CameraEntry(CameraConfig):
    """One `[[cameras]]` entry: a named camera, its own pacing, detect overrides and zones (polygons in
    normalized frame coordinates; a detection counts only when its box's bottom-centre is in one)."""

    name: str = "default"
    target_fps: float | None = Field(default=None, gt=0, description="cap this camera's inference rate")
    detect: DetectOverrides = Field(default_factory=DetectOverrides)
    zones: list[Polygon] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_segment(v, "camera name")

    @field_validator("zones")
    @classmethod
    def _zones(cls, v: list[Polygon]) -> list[Polygon]:
        for poly in v:
            if len(poly) < 3:
                raise ValueError("a zone needs at least 3 points")
            if any(not (0 <= x <= 1 and 0 <= y <= 1) for x, y in poly):
                raise ValueError("zone points are normalized: 0 <= x, y <= 1")
        return v


def engine_detect(base: DetectConfig, cameras: list[CameraEntry]) -> DetectConfig:
    """What the shared engine decodes with: permissive enough for every camera (lowest threshold, every
    class any camera wants, cross-class NMS only if all want it); each camera then filters its own."""
    per = [c.detect.apply(base) for c in cameras] or [base]
    classes: list[str] | None = None
    if all(d.classes is not None for d in per):
        classes = sorted({n for d in per for n in d.classes or []})
    return base.model_copy(update={
        "score_threshold": min(d.score_threshold for d in per),
        "class_agnostic_nms": all(d.class_agnostic_nms for d in per),
        "classes": classes,
    })


class PublishConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_rate_hz: float = Field(default=5.0, gt=0, description="detection messages per second at most")
    publish_empty: bool = Field(default=False, description="also publish frames without detections")
    snapshot: bool = Field(default=False, description="publish a JPEG on the snapshot topic on detection")
    snapshot_interval_s: float = Field(default=10.0, ge=0)
    snapshot_quality: int = Field(default=80, ge=10, le=100)
    snapshot_max_width: int = Field(default=640, ge=32)


class EngineConfig(Protocol):
    """What the engine reads of the agent's configuration."""

    @property
    def backend(self) -> BackendConfig: ...

    @property
    def detect(self) -> DetectConfig: ...

    @property
    def state_dir(self) -> Path: ...
