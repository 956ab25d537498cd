"""The objects of benchmark dataset v2 (builder.data.synth_photo): class shapes in class colours, and look-alike
distractors, drawn with an aspect ratio, a rotation, a texture, shading and a drop shadow.

A class is its shape (builder.data.synth_shapes) in its colour family: the hue circle (OpenCV's 0-180) is cut into
2 x n equal sectors; class k owns sector 2k, and the sectors in between belong to no class. A distractor is a
class shape in an in-between hue, a class shape stretched to an aspect ratio of 1.7-2.6 (an ellipse is not a
circle, a rectangle not a square), or a known shape no class uses: it looks like a class and is never labelled.

numpy + OpenCV only (see builder.data.synth).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from builder.data.synth_scene import hue_colour, texture
from builder.data.synth_shapes import shape_angle, shape_outline

_CIRCLE_ANGLES = np.linspace(0, 2 * np.pi, 48, endpoint=False)
_CIRCLE = np.stack([np.cos(_CIRCLE_ANGLES), np.sin(_CIRCLE_ANGLES)], axis=1)  # the circle as a 48-gon
CLASS_ASPECT = (0.87, 1.15)  # labelled objects stay close to their shape's own proportions
STRETCH_ASPECT = (1.7, 2.6)  # the stretched look-alikes


@dataclass
class PhotoObject:
    """One painted thing. `cls` is the class id, or -1 for a distractor (never labelled)."""

    cls: int
    shape: str
    cx: float
    cy: float
    size: float  # sqrt(w * h) of its box, pixels
    aspect: float
    angle: float
    hue: float  # OpenCV hue, 0-180
    texture_seed: int


def object_points(o: PhotoObject) -> np.ndarray:
    """Outline vertices in image pixels: stretched by the aspect ratio, rotated, scaled so that the box's
    sqrt(w * h) is `o.size`, centred on (cx, cy)."""
    outline = shape_outline(o.shape)
    pts = (_CIRCLE if outline is None else outline) * np.array([np.sqrt(o.aspect), 1 / np.sqrt(o.aspect)])
    a = shape_angle(o.shape, o.angle)
    c, s = np.cos(a), np.sin(a)
    pts = pts @ np.array([[c, -s], [s, c]]).T
    extent = np.ptp(pts, axis=0)
    pts = (pts - (pts.min(axis=0) + extent / 2)) * (o.size / np.sqrt(max(1e-9, float(extent[0] * extent[1]))))
    return pts + np.array([o.cx, o.cy])


def object_extent(o: PhotoObject) -> tuple[float, float]:
    """(w, h) of the object's box, pixels."""
    w, h = np.ptp(object_points(o), axis=0)
    return float(w), float(h)


def object_mask(o: PhotoObject, w: int, h: int) -> np.ndarray:
    """(h, w) uint8 coverage, anti-aliased edges (sub-pixel vertices)."""
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(object_points(o) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    return mask


def _shadow(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, size: float) -> None:
    """Darken the canvas under a shifted, blurred copy of the mask (a light from one side)."""
    d = size * rng.uniform(0.04, 0.12)
    a = rng.uniform(0, 2 * np.pi)
    shift = np.array([[1, 0, d * np.cos(a)], [0, 1, d * np.sin(a)]], np.float32)
    shadow = cv2.warpAffine(mask, shift, (mask.shape[1], mask.shape[0]))
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.5, size * 0.06)).astype(np.float32) / 255.0
    canvas *= (1.0 - rng.uniform(0.25, 0.5) * shadow)[..., None]


def paint_object(rng: np.random.Generator, canvas: np.ndarray, o: PhotoObject, mask: np.ndarray) -> None:
    """Composite the object onto the float canvas: colour, a fine texture, shading, maybe a drop shadow."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return
    if rng.random() < 0.5:
        _shadow(rng, canvas, mask, o.size)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    trng = np.random.default_rng(o.texture_seed)
    tex = texture(trng, x1 - x0, y1 - y0, hue_colour(rng, o.hue), trng.uniform(0.03, 0.15))
    # Shading: brightness falls off across the object in a random direction.
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ramp = ((xx - o.cx) * np.cos(a) + (yy - o.cy) * np.sin(a)) / max(1.0, o.size)
    tex *= (1.0 + rng.uniform(0.0, 0.6) * ramp)[..., None]
    alpha = (mask[y0:y1, x0:x1].astype(np.float32) / 255.0)[..., None]
    region = canvas[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = region * (1 - alpha) + np.clip(tex, 0, 255) * alpha
