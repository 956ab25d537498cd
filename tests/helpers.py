"""Small helpers several test files share: where the test data lives, box overlap, polling a condition."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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


def wait_for(cond: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll `cond` until it is truthy or `timeout` seconds pass; one last look at the deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())
