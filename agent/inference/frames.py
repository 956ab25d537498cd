"""The per-frame record and the engine protocol: what the pipeline, telemetry and the OTA trial share.

One `FrameResult` per inferred frame travels through the pipeline's frame hooks; the updater's trial
monitor reads the same record (with `outputs` filled in only while a trial runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agent.camera.sources import Frame
from agent.protocol.messages import Detection
from agent.security.bundle import Bundle


class EngineLike(Protocol):
    """What the pipeline needs of agent.inference.engine.Engine."""

    @property
    def backend_name(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    @property
    def model_version(self) -> int: ...

    def infer_timed(self, frame_bgr: np.ndarray) -> tuple[list[Detection], Any]: ...

    def invoke_raw(self, input: np.ndarray) -> list[np.ndarray]: ...  # noqa: A002 - mirrors Engine

    def close(self) -> None: ...


class BundleIdentity:
    """What an engine (one device or a pool) says of the model it runs: the bundle's name and version."""

    bundle: Bundle

    @property
    def model_name(self) -> str:
        return self.bundle.manifest.name

    @property
    def model_version(self) -> int:
        return self.bundle.manifest.version


@dataclass(frozen=True)
class FrameStats:
    """Per-frame timings (seconds) and outcome, for telemetry and the OTA trial."""

    index: int  # the camera's frame index
    frame_ts: float  # capture wall time
    capture_wait_s: float  # inference thread waiting for a new frame
    preprocess_s: float
    invoke_s: float
    postprocess_s: float
    end_to_end_s: float  # capture → detections ready
    detections: int
    backend: str | None
    model_version: int | None
    error: str | None = None


@dataclass
class FrameResult:
    """One inferred frame, as every frame hook sees it."""

    frame: Frame
    detections: list[Detection]
    stats: FrameStats
    model_name: str | None
    model_version: int | None
    backend: str | None
    engine: Any = None  # the engine that ran this frame (the OTA trial tells old from new)
    outputs: Sequence[np.ndarray] | None = None  # raw outputs, attached only while a trial watches them
    camera: str = "default"  # the [[cameras]] name the frame came from
    device: str | None = None  # where it ran ("usb:0", "cpu", …): a TPU pool spreads cameras over devices

    @property
    def latency_s(self) -> float:
        """Model time of this frame: preprocess + invoke + postprocess (no capture wait)."""
        return self.stats.preprocess_s + self.stats.invoke_s + self.stats.postprocess_s
