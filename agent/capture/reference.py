"""The score reference: the histogram of detection scores the builder measured on its validation split.

File `score_reference.json` next to the model in the bundle (optional; docs/PROTOCOL.md "Hard-example
capture"). A node compares the scores it sees with it: a total variation distance over the bins at or above
the higher of the two thresholds (the builder's `min_score` and the node's own detect threshold).
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REFERENCE_FILE = "score_reference.json"


class ReferenceError(ValueError):
    """The reference file is unreadable or inconsistent."""


class ScoreReference(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int = 1
    edges: list[float] = Field(description="bin edges, ascending, within [0, 1]")
    counts: list[int] = Field(description="detections per bin (len(edges) - 1)")
    min_score: float = Field(ge=0, le=1, description="the threshold the detections were collected at")
    images: int = Field(ge=0, description="validation images the counts come from")
    source: str = ""

    @model_validator(mode="after")
    def _shape(self) -> ScoreReference:
        e = self.edges
        if len(e) < 3 or len(self.counts) != len(e) - 1 or any(b <= a for a, b in zip(e, e[1:], strict=False)):
            raise ValueError("edges must ascend and counts must have one entry per bin")
        if e[0] < 0 or e[-1] > 1 or min(self.counts) < 0 or sum(self.counts) == 0:
            raise ValueError("edges within [0, 1], counts non-negative and not all zero")
        return self

    @classmethod
    def from_scores(cls, scores: np.ndarray, min_score: float, images: int, bins: int = 20,
                    source: str = "") -> ScoreReference:
        edges = np.linspace(0.0, 1.0, bins + 1)
        counts, _ = np.histogram(np.asarray(scores, np.float64)[np.asarray(scores) >= min_score], bins=edges)
        return cls(edges=[round(float(x), 6) for x in edges], counts=[int(c) for c in counts],
                   min_score=min_score, images=images, source=source)


def load_reference(model_dir: Path) -> ScoreReference | None:
    """The bundle's reference, or None when it ships none; ReferenceError when it is broken."""
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        return ScoreReference.model_validate(json.loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ReferenceError(f"{path}: {exc}") from exc


def tv_distance(ref: ScoreReference, scores: np.ndarray, floor: float) -> float | None:
    """Total variation distance (0 same .. 1 disjoint) of `scores` against the reference, over the bins
    whose lower edge is >= floor. None when either side has nothing there."""
    edges = np.asarray(ref.edges)
    keep = edges[:-1] >= floor - 1e-9
    ref_c = np.asarray(ref.counts, np.float64)[keep]
    obs_c, _ = np.histogram(scores, bins=edges)
    obs = obs_c[keep].astype(np.float64)
    if ref_c.sum() == 0 or obs.sum() == 0:
        return None
    return float(0.5 * np.abs(ref_c / ref_c.sum() - obs / obs.sum()).sum())


class DriftMonitor:
    """The last `window` detection scores against one reference; `update` gives the distance once full."""

    def __init__(self, ref: ScoreReference, window: int, threshold: float, node_floor: float) -> None:
        self.ref, self.threshold = ref, threshold
        self.floor = max(ref.min_score, node_floor)
        self.scores: deque[float] = deque(maxlen=window)
        self.last: float | None = None

    def update(self, scores: list[float]) -> float | None:
        """Add a frame's scores; the distance when the window is full and past the threshold (then the
        window starts again, so one drift makes one capture per window, not one per frame)."""
        self.scores.extend(s for s in scores if s >= self.floor)
        if len(self.scores) < (self.scores.maxlen or 0):
            return None
        self.last = tv_distance(self.ref, np.fromiter(self.scores, np.float64), self.floor)
        if self.last is None or self.last < self.threshold:
            return None
        self.scores.clear()
        return self.last
