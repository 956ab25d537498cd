"""Detections per frame for telemetry (agent.protocol.telemetry.DetectionCounts): counted from each frame's
result on the pipeline's frame hook, per model version, so the window a rollout gate reads is one model's."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.protocol.telemetry import DetectionCounts

MAX_CLASSES = 256  # by_class stays bounded whatever a model's labels say; the rest is counted under "other"


@dataclass
class _Tally:
    """One model's counts in one window."""

    by_class: dict[str, int] = field(default_factory=dict)
    frames: int = 0  # frames counted
    total: int = 0  # detections on them
    empty: int = 0  # frames without any
    most: int = 0  # the most on one frame

    def add(self, detections: Sequence[Any]) -> None:
        n = len(detections)
        self.frames += 1
        self.total += n
        self.empty += n == 0
        self.most = max(self.most, n)
        for d in detections:
            name = str(getattr(d, "class_name", None) or getattr(d, "class_id", "?"))
            if name not in self.by_class and len(self.by_class) >= MAX_CLASSES:
                name = "other"
            self.by_class[name] = self.by_class.get(name, 0) + 1


class DetectionTally:
    """Thread-safe: `record` from the inference thread(s), `snapshot` from the telemetry publisher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: dict[int | None, _Tally] = {}
        self._latest: int | None = None
        self._frames = 0
        self._total = 0

    def record(self, detections: Sequence[Any], model_version: int | None) -> None:
        """One frame inferred without error and the detections it produced."""
        with self._lock:
            self._latest = model_version
            self._window.setdefault(model_version, _Tally()).add(detections)
            self._frames += 1
            self._total += len(detections)

    def snapshot(self, reset: bool = True) -> DetectionCounts:
        with self._lock:
            version = self._latest
            t = self._window.get(version) or _Tally()
            if reset:
                self._window = {}
            frames, total = self._frames, self._total
        return DetectionCounts(
            model_version=version, frames=t.frames, total=t.total,
            per_frame=round(t.total / t.frames, 4) if t.frames else None,
            empty_frames=t.empty, max_per_frame=t.most, by_class=dict(t.by_class),
            frames_since_start=frames, total_since_start=total)


__all__ = ["DetectionTally"]
