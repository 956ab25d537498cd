"""Zones: a detection counts for a camera only when its box's bottom-centre (where an object stands) falls
inside one of the camera's polygons, in normalized frame coordinates. Pure numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bottom_centres(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy boxes → (N, 2) points: the middle of each box's bottom edge."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2.0, b[:, 3]], axis=1)


def points_in_polygon(points: np.ndarray, polygon: Sequence[Sequence[float]]) -> np.ndarray:
    """Even-odd ray casting: a (N,) bool mask of the points strictly inside `polygon` (M ≥ 3 vertices).
    Points on an edge may fall either way, as in every NVR."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    x, y = pts[:, 0:1], pts[:, 1:2]  # (N, 1) against (M,) edges
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    crosses = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    hits = crosses & (x < x_at)
    return np.asarray(hits.sum(axis=1) % 2 == 1)


def in_zones(boxes: np.ndarray, zones: Sequence[Sequence[Sequence[float]]]) -> np.ndarray:
    """(N,) mask: boxes whose bottom-centre is inside any zone; every box when there are no zones."""
    pts = bottom_centres(boxes)
    if not zones:
        return np.ones(len(pts), dtype=bool)
    mask = np.zeros(len(pts), dtype=bool)
    for poly in zones:
        mask |= points_in_polygon(pts, poly)
    return mask
