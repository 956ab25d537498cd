"""A feed: one named camera as the shared inference loop sees it — its pacing, its own detection settings
and zones (applied to the shared engine's detections), and its per-camera counters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.camera.capture import Camera
from agent.inference.config import CameraEntry, DetectConfig
from agent.inference.decode.nms import class_agnostic_nms
from agent.inference.zones import in_zones
from agent.protocol.messages import Detection


@dataclass
class FeedCounters:
    inferred: int = 0
    errors: int = 0
    detections: int = 0
    zone_filtered: int = 0  # detections dropped because they stood outside every zone


@dataclass
class Feed:
    name: str
    camera: Camera
    detect: DetectConfig | None = None  # this camera's effective settings; None = whatever the engine reports
    zones: list[list[tuple[float, float]]] = field(default_factory=list)
    target_fps: float | None = None
    counters: FeedCounters = field(default_factory=FeedCounters)
    device: str | None = None  # where its last frame ran ("cpu", "usb:0", …)
    last_latency_s: float | None = None
    # scheduler bookkeeping (under the scheduler's lock)
    last_served: float = 0.0
    next_due: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_entry(cls, entry: CameraEntry, base: DetectConfig, engine: DetectConfig | None = None,
                   camera: Camera | None = None) -> Feed:
        """`engine`: what the shared engine decodes with; a camera asking for exactly that filters nothing."""
        own = entry.detect.apply(base)
        return cls(entry.name, camera or Camera(entry), None if own == engine else own, list(entry.zones),
                   entry.target_fps)

    def filter(self, dets: list[Detection]) -> list[Detection]:
        """This camera's view of the shared engine's detections: its threshold, classes, NMS, zones."""
        d = self.detect
        if d is not None:
            dets = [x for x in dets if x.score >= d.score_threshold
                    and (d.classes is None or x.class_name in d.classes)]
            if d.class_agnostic_nms and len(dets) > 1:
                boxes = np.array([x.box for x in dets], dtype=np.float32)
                scores = np.array([x.score for x in dets], dtype=np.float32)
                dets = [dets[i] for i in sorted(class_agnostic_nms(boxes, scores, d.iou_threshold).tolist())]
        if self.zones and dets:
            keep = in_zones(np.array([x.box for x in dets]), self.zones)
            self.counters.zone_filtered += int((~keep).sum())
            dets = [x for x, k in zip(dets, keep.tolist(), strict=True) if k]
        return dets

    def record(self, n_dets: int, error: bool, device: str | None, latency_s: float) -> None:
        with self._lock:
            self.counters.inferred += 1
            self.counters.errors += int(error)
            self.counters.detections += n_dets
            self.device, self.last_latency_s = device, latency_s

    def status(self) -> dict[str, Any]:
        cam = self.camera.status()
        return {**cam, "name": self.name, "inferred": self.counters.inferred, "errors": self.counters.errors,
                "device": self.device}
