"""Small helpers several test files share: where the test data lives, box overlap, polling a condition."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Vendored with the repository (tests/data/coral/README.md); CORAL_TEST_DATA points at another copy.
CORAL_DATA = Path(os.environ.get("CORAL_TEST_DATA", ROOT / "tests" / "data" / "coral"))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def read_frames(path: Path) -> list[Any]:
    """Every frame of a video file (BGR arrays), in order."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def wait_for(cond: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll `cond` until it is truthy or `timeout` seconds pass; one last look at the deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


@dataclass
class DetectionQuality:
    """Detections scored against drawn ground truth, summed over frames.

    The shared test model (minutes of CPU training) finds every object but tells the classes apart only
    ~65-90 % of the time depending on the run, so `check` asks for near-perfect localisation and a right-class
    rate well above chance: a wrong box mapping or frame index drops `located` to ~0, a wrong class table
    drops `right` to ~1/3.
    """

    located: int = 0  # ground-truth boxes with a detection of any class at IoU >= 0.5
    right: int = 0  # ... with one of the right class
    total: int = 0
    stray: int = 0  # detections nowhere near an object (IoU < 0.1 with every box)
    detections: int = 0

    def add(self, dets: Sequence[tuple[Sequence[float], str]], boxes: Sequence[Sequence[float]],
            names: Sequence[str]) -> None:
        """One frame: `dets` as (box, class name) pairs, the truth as boxes and their class names."""
        for box, name in zip(boxes, names, strict=True):
            self.total += 1
            self.located += any(iou(b, box) >= 0.5 for b, _ in dets)
            self.right += any(n == name and iou(b, box) >= 0.5 for b, n in dets)
        self.detections += len(dets)
        self.stray += sum(all(iou(b, t) < 0.1 for t in boxes) for b, _ in dets)

    def check(self) -> None:
        assert self.total > 0
        assert self.located / self.total >= 0.9, f"{self.located}/{self.total} objects located (IoU >= 0.5)"
        assert self.right / self.total >= 0.5, f"{self.right}/{self.total} objects with the right class"
        assert self.stray <= max(1, self.detections // 10), f"{self.stray} of {self.detections} detections stray"
