"""The synthetic shapes: one outline per class (circle, square, triangle, star, hexagon, cross, diamond) and
their sub-pixel masks. numpy + OpenCV only (see builder.data.synth)."""

from __future__ import annotations

import cv2
import numpy as np


def _regular_polygon(n: int, star: bool = False) -> np.ndarray:
    """Unit polygon (radius 1) vertices; a star alternates outer/inner radii."""
    k = 2 * n if star else n
    ang = np.arange(k) * (2 * np.pi / k) - np.pi / 2
    r = np.ones(k)
    if star:
        r[1::2] = 0.45
    return np.stack([np.cos(ang) * r, np.sin(ang) * r], axis=1)


def _cross() -> np.ndarray:
    a, b = 1.0, 0.35
    return np.array(
        [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
    )


# Each shape: unit outline (None = circle) and whether it may rotate.
_SHAPES: dict[str, np.ndarray | None] = {
    "circle": None,
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.8,
    "triangle": _regular_polygon(3),
    "star": _regular_polygon(5, star=True),
    "hexagon": _regular_polygon(6),
    "cross": _cross(),
    "diamond": np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], dtype=float),
}
_SHAPE_ORDER = list(_SHAPES)
KNOWN_SHAPES: tuple[str, ...] = tuple(_SHAPES)


def shape_for_class(name: str, index: int) -> str:
    """The shape drawn for a class: its own name when known, else one by index (documented mapping)."""
    return name if name in _SHAPES else _SHAPE_ORDER[index % len(_SHAPE_ORDER)]


def shape_outline(shape: str) -> np.ndarray | None:
    """The unit outline (vertices, radius about 1) of a known shape; None for the circle."""
    return _SHAPES[shape]


def shape_angle(shape: str, angle: float) -> float:
    """The rotation a shape is drawn with for a drawn `angle`: squares tilt by at most ~14 degrees, so they stay
    distinct from diamonds; every other shape turns freely."""
    if shape == "square":
        return float(((angle % (2 * np.pi)) / (2 * np.pi) - 0.5) * 0.5)
    return angle


def _shape_points(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray | None:
    outline = _SHAPES[shape]
    if outline is None:
        return None
    angle = shape_angle(shape, angle)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return (outline @ rot.T) * radius + np.array([cx, cy])


def shape_mask(shape: str, w: int, h: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """(h, w) uint8 mask, 255 inside the shape."""
    mask = np.zeros((h, w), np.uint8)
    pts = _shape_points(shape, cx, cy, radius, angle)
    # Sub-pixel precision (shift=4) keeps boxes tight for small shapes.
    if pts is None:
        cv2.circle(mask, (int(round(cx * 16)), int(round(cy * 16))), int(round(radius * 16)), 255, -1, cv2.LINE_8, 4)
    else:
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
    return mask
