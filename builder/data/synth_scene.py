"""Synthetic scenes: textured shapes on varied backgrounds under varied lighting, with their boxes.

numpy + OpenCV only (see builder.data.synth). Rendering consumes one RNG stream in a fixed order, so a seed
always gives the same image: keep the order of the random draws when changing anything here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from builder.data.synth_shapes import shape_for_class, shape_mask

DEFAULT_CLASSES: list[str] = ["circle", "square", "triangle"]

# A box counts as visible when at least this much of its shape is not covered by later shapes.
_MIN_VISIBLE = 0.6


# ------------------------------------------------------------------------------------------- textures


PALETTES = ("random", "class")  # how objects are coloured: any colour, or a colour of their class's hue sector


def sector(n_classes: int) -> float:
    """Width of one hue sector (OpenCV units): the hue circle is cut into 2 x n, class k owns sector 2k."""
    return 180.0 / (2 * n_classes)


def class_hue(rng: np.random.Generator, k: int, n_classes: int) -> float:
    """A hue inside class k's sector (its middle half, so jitter and lighting keep it there)."""
    w = sector(n_classes)
    return float((2 * k * w + rng.uniform(-0.25, 0.25) * w) % 180)


def off_class_hue(rng: np.random.Generator, n_classes: int) -> float:
    """A hue in one of the sectors between the classes' sectors."""
    w = sector(n_classes)
    k = int(rng.integers(0, n_classes))
    return float(((2 * k + 1) * w + rng.uniform(-0.25, 0.25) * w) % 180)


def hue_colour(rng: np.random.Generator, hue: float) -> np.ndarray:
    """A saturated BGR colour of the given OpenCV hue, random saturation and value."""
    hsv = np.array([[[hue, rng.uniform(150, 255), rng.uniform(120, 255)]]], np.float32)
    return cv2.cvtColor(np.round(hsv).astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def object_colour(rng: np.random.Generator, cls: int, n_classes: int, palette: str = "random") -> np.ndarray:
    """An object's colour. "random": any colour, so only the shape tells the class (the default, and what the
    shared test model learns); "class": a colour of the class's own hue sector, so colour tells it too."""
    check_palette(palette)
    if palette == "class":
        return hue_colour(rng, class_hue(rng, cls, n_classes))
    return random_color(rng)


def check_palette(palette: str) -> None:
    if palette not in PALETTES:
        raise ValueError(f"unknown palette {palette!r}; one of {', '.join(PALETTES)}")


def random_color(rng: np.random.Generator) -> np.ndarray:
    """A saturated-enough colour (HSV sampled) so shapes stand out from most backgrounds."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(90, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def texture(rng: np.random.Generator, w: int, h: int, base: np.ndarray, strength: float) -> np.ndarray:
    """A (h, w, 3) float texture around `base`: stripes, checks, or smooth noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(0, 4))
    if kind == 0:  # flat
        pattern: np.ndarray = np.zeros((h, w), np.float32)
    elif kind == 1:  # stripes at a random angle
        a = rng.uniform(0, np.pi)
        period = rng.uniform(6, 24)
        pattern = np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period)
    elif kind == 2:  # checks
        cell = int(rng.integers(4, 16))
        pattern = (((xx // cell) + (yy // cell)) % 2) * 2.0 - 1.0
    else:  # smooth noise
        small = rng.standard_normal((max(2, h // 16), max(2, w // 16))).astype(np.float32)
        pattern = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        pattern = pattern / max(1e-6, float(np.abs(pattern).max()))
    tint = random_color(rng) - base
    tex = base[None, None, :] + pattern[..., None] * strength * (0.5 * tint + 20.0)
    return tex.astype(np.float32)


def render_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Varied backgrounds: a gradient between two muted colours plus a texture and clutter strokes."""
    c0 = random_color(rng) * rng.uniform(0.3, 0.9)
    c1 = random_color(rng) * rng.uniform(0.3, 0.9)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * np.cos(a) + yy * np.sin(a)) / max(w, h)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += texture(rng, w, h, np.zeros(3, np.float32), rng.uniform(0.05, 0.4))
    # Thin clutter lines and small blobs: distractors that are not any class.
    for _ in range(int(rng.integers(0, 4))):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p0, p1, random_color(rng).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(2, max(3, w // 40))), int(rng.integers(2, max(3, h // 40))))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, random_color(rng).tolist(), -1)
    return img


def apply_lighting(rng: np.random.Generator, img: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Gain, gamma, a directional lighting gradient, sensor noise and occasional blur -> uint8 BGR."""
    h, w = img.shape[:2]
    gain = 1.0 + strength * rng.uniform(-0.35, 0.25)
    gamma = float(np.exp(strength * rng.uniform(-0.35, 0.35)))
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)) / max(w, h)
    light = 1.0 + strength * rng.uniform(0, 0.6) * ramp
    out = np.clip(img * gain * light[..., None], 0, 255) / 255.0
    out = np.power(out, gamma) * 255.0
    out += rng.normal(0, strength * rng.uniform(0, 6), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.2 * strength:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    return out


# ---------------------------------------------------------------------------------------------- scenes


@dataclass
class SceneObject:
    """One shape in a scene: class, geometry (pixels, radians) and how it is painted."""

    cls: int
    shape: str
    cx: float
    cy: float
    radius: float
    angle: float
    texture_seed: int
    color: np.ndarray
    keep_hue: bool = False  # class palette: the colour carries the class, so contrast fixes keep its hue


def _contrasting(obj: SceneObject, under: np.ndarray) -> np.ndarray:
    """A colour that stands out from `under`: its complement, or (keep_hue) the object's own colour darkened or
    lightened."""
    if not obj.keep_hue:
        return np.clip(255.0 - under, 0, 255)
    if float(under.mean()) > 127:
        return obj.color * 0.45
    return obj.color + (255.0 - obj.color) * 0.5


def _paint(canvas: np.ndarray, obj: SceneObject, mask: np.ndarray) -> None:
    rng = np.random.default_rng(obj.texture_seed)
    h, w = canvas.shape[:2]
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    alpha = (mask[y0:y1, x0:x1].astype(np.float32) / 255.0)[..., None]
    region = canvas[y0:y1, x0:x1]
    # Keep the silhouette visible: an object as dark/bright as what it covers becomes its complement.
    under = region[mask[y0:y1, x0:x1] > 127].mean(axis=0)
    color = obj.color if np.abs(obj.color - under).sum() >= 120 else _contrasting(obj, under)
    tex = texture(rng, int(x1 - x0), int(y1 - y0), color.astype(np.float32), rng.uniform(0.05, 0.3))
    canvas[y0:y1, x0:x1] = region * (1 - alpha) + tex * alpha
    # A darker outline on some objects, as real objects have edges of varying contrast.
    if rng.random() < 0.5:
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, (color * 0.4).tolist(), 1, cv2.LINE_AA)


def render(
    rng: np.random.Generator, background: np.ndarray, objects: Sequence[SceneObject], lighting: float = 1.0
) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """Paint objects in order onto a copy of the background; return the image and pixel xyxy boxes.

    Boxes are each shape's full (amodal) extent; objects mostly hidden by later ones are dropped from the
    truth (and the placement code avoids creating them).
    """
    h, w = background.shape[:2]
    canvas = background.copy()
    masks = [shape_mask(o.shape, w, h, o.cx, o.cy, o.radius, o.angle) for o in objects]
    for o, m in zip(objects, masks, strict=True):
        _paint(canvas, o, m)
    truths: list[tuple[int, tuple[float, float, float, float]]] = []
    covered = np.zeros((h, w), bool)
    for o, m in reversed(list(zip(objects, masks, strict=True))):
        on = m > 127
        area = int(on.sum())
        if area < 4:
            continue
        visible = float((on & ~covered).sum()) / area
        covered |= on
        if visible < _MIN_VISIBLE:
            continue
        ys, xs = np.nonzero(on)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        truths.append((o.cls, box))
    truths.reverse()
    return apply_lighting(rng, canvas, lighting), truths


def place_objects(
    rng: np.random.Generator, w: int, h: int, n_classes: int, classes: Sequence[str], max_objects: int = 4,
    palette: str = "random",
) -> list[SceneObject]:
    """Random objects with scale variety; an overlap check keeps earlier objects mostly visible."""
    objs: list[SceneObject] = []
    boxes: list[tuple[float, float, float, float]] = []
    n = int(rng.integers(1, max_objects + 1))
    short = min(w, h)
    for _ in range(n * 6):
        if len(objs) == n:
            break
        radius = float(short * rng.uniform(0.06, 0.22))
        cx = float(rng.uniform(radius * 0.6, w - radius * 0.6))  # may be cut by the border a little
        cy = float(rng.uniform(radius * 0.6, h - radius * 0.6))
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        # Allow partial occlusion but not burying: at most 35% of an earlier object's box covered.
        if any(overlap_fraction(b, box) > 0.35 for b in boxes):
            continue
        cls = int(rng.integers(0, n_classes))
        objs.append(
            SceneObject(
                cls=cls,
                shape=shape_for_class(classes[cls], cls),
                cx=cx,
                cy=cy,
                radius=radius,
                angle=float(rng.uniform(0, 2 * np.pi)),
                texture_seed=int(rng.integers(0, 2**31)),
                color=object_colour(rng, cls, n_classes, palette),
                keep_hue=palette == "class",
            )
        )
        boxes.append(box)
    return objs


def overlap_fraction(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Fraction of box a covered by box b."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = max(1e-9, (a[2] - a[0]) * (a[3] - a[1]))
    return iw * ih / area


def render_image(
    seed: int, width: int, height: int, classes: Sequence[str] = DEFAULT_CLASSES, max_objects: int = 4,
    palette: str = "random",
) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """One synthetic BGR image and its (class id, pixel xyxy box) truth, deterministic by seed (and palette)."""
    rng = np.random.default_rng(seed)
    bg = render_background(rng, width, height)
    objs = place_objects(rng, width, height, len(classes), classes, max_objects, palette)
    return render(rng, bg, objs)
