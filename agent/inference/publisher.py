"""Detections out: FrameResults → DetectionsMessages on each camera's topic (and the single-camera topic for
the camera named `default`), rate-limited per camera, plus an optional JPEG snapshot. Runs on the
pipeline's publisher thread."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from agent.inference.config import PublishConfig
from agent.inference.frames import FrameResult
from agent.protocol.messages import DetectionsMessage
from agent.protocol.topics import Topics

#: The camera whose detections also go to the node's historical single-camera topics.
DEFAULT_CAMERA = "default"


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool: ...


@dataclass
class PublishCounters:
    messages: int = 0
    rate_limited: int = 0
    snapshots: int = 0
    failed: int = 0


@dataclass
class _CameraState:
    last_pub: float = -1e9
    last_snap: float = -1e9
    had_detections: bool = False


@dataclass
class DetectionPublisher:
    """At most `max_rate_hz` messages per camera; an empty message when objects leave a camera's scene."""

    client: Publisher
    topics: Topics
    node_id: str
    cfg: PublishConfig = field(default_factory=PublishConfig)
    counters: PublishCounters = field(default_factory=PublishCounters)
    _cams: dict[str, _CameraState] = field(default_factory=dict)

    def _send(self, camera: str, leaf: str, payload: bytes | str) -> bool:
        topics = [self.topics.camera_detections(self.node_id, camera) if leaf == "detections"
                  else self.topics.camera_snapshot(self.node_id, camera)]
        if camera == DEFAULT_CAMERA:  # the single-camera topic stays an alias of `default`
            topics.append(self.topics.node(self.node_id, leaf))
        return all([self.client.publish(t, payload) for t in topics])

    def __call__(self, result: FrameResult) -> None:
        now = time.monotonic()
        st = self._cams.setdefault(result.camera, _CameraState())
        has = bool(result.detections)
        # An empty message when objects leave the scene, so subscribers can clear their view.
        cleared = st.had_detections and not has
        if not has and not self.cfg.publish_empty and not cleared:
            return
        if now - st.last_pub < 1.0 / self.cfg.max_rate_hz and not cleared:
            self.counters.rate_limited += 1
            return
        msg = DetectionsMessage(
            node=self.node_id,
            frame_ts=result.frame.ts,
            frame_index=result.frame.index,
            model_name=result.model_name or "",
            model_version=result.model_version or 0,
            backend=result.backend or "",
            detections=result.detections,
            camera=result.camera,
        )
        if self._send(result.camera, "detections", msg.model_dump_json()):
            self.counters.messages += 1
        else:
            self.counters.failed += 1
        st.last_pub = now
        st.had_detections = has
        if has and self.cfg.snapshot and now - st.last_snap >= self.cfg.snapshot_interval_s:
            jpeg = encode_snapshot(result.frame.image, self.cfg.snapshot_max_width, self.cfg.snapshot_quality)
            if jpeg is not None and self._send(result.camera, "snapshot", jpeg):
                self.counters.snapshots += 1
                st.last_snap = now


def encode_snapshot(image: np.ndarray, max_width: int, quality: int) -> bytes | None:
    h, w = image.shape[:2]
    if w > max_width:
        image = cv2.resize(image, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return buf.tobytes() if ok else None
