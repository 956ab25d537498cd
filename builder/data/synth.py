"""Deterministic synthetic detection data: a YOLO-format dataset and videos with per-frame ground truth.

Only numpy + OpenCV (+ pydantic): the agent's Python 3.11 tests import this module too, so it must never
pull in torch, TensorFlow or onnx.

Scenes are textured shapes (circle, square, triangle, ... one shape per class) of varied scale, rotation
and colour, partly occluding each other, on varied backgrounds (gradients, stripes, checkers, noise
blobs), under varied lighting (gain, gamma, a lighting gradient, sensor noise, slight blur). The same
renderer draws dataset images and video frames, so a model trained on the dataset sees the video's
distribution.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, Field

DEFAULT_CLASSES: list[str] = ["circle", "square", "triangle"]

# A box counts as visible when at least this much of its shape is not covered by later shapes.
_MIN_VISIBLE = 0.6


class FrameTruth(BaseModel):
    """Ground truth of one video frame: normalized xyxy boxes in [0, 1] with class ids and names."""

    frame: int = Field(ge=0)
    time_s: float = Field(ge=0)
    boxes: list[tuple[float, float, float, float]] = Field(default_factory=list)
    class_ids: list[int] = Field(default_factory=list)
    class_names: list[str] = Field(default_factory=list)


class VideoTruth(BaseModel):
    """The JSON written beside a generated video (`<video>.json`)."""

    video: str
    fps: float
    width: int
    height: int
    n_frames: int
    classes: list[str]
    seed: int
    frames: list[FrameTruth]


# ---------------------------------------------------------------------------------------------- shapes


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


def shape_for_class(name: str, index: int) -> str:
    """The shape drawn for a class: its own name when known, else one by index (documented mapping)."""
    return name if name in _SHAPES else _SHAPE_ORDER[index % len(_SHAPE_ORDER)]


def _shape_points(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray | None:
    outline = _SHAPES[shape]
    if outline is None:
        return None
    # Squares tilt by at most ~14 degrees, so they stay distinct from diamonds.
    if shape == "square":
        angle = ((angle % (2 * np.pi)) / (2 * np.pi) - 0.5) * 0.5
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return (outline @ rot.T) * radius + np.array([cx, cy])


def _shape_mask(shape: str, w: int, h: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    pts = _shape_points(shape, cx, cy, radius, angle)
    # Sub-pixel precision (shift=4) keeps boxes tight for small shapes.
    if pts is None:
        cv2.circle(mask, (int(round(cx * 16)), int(round(cy * 16))), int(round(radius * 16)), 255, -1, cv2.LINE_8, 4)
    else:
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
    return mask


# ------------------------------------------------------------------------------------------- textures


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """A saturated-enough colour (HSV sampled) so shapes stand out from most backgrounds."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(90, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _texture(rng: np.random.Generator, w: int, h: int, base: np.ndarray, strength: float) -> np.ndarray:
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
    tint = _random_color(rng) - base
    tex = base[None, None, :] + pattern[..., None] * strength * (0.5 * tint + 20.0)
    return tex.astype(np.float32)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Varied backgrounds: a gradient between two muted colours plus a texture and clutter strokes."""
    c0 = _random_color(rng) * rng.uniform(0.3, 0.9)
    c1 = _random_color(rng) * rng.uniform(0.3, 0.9)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * np.cos(a) + yy * np.sin(a)) / max(w, h)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += _texture(rng, w, h, np.zeros(3, np.float32), rng.uniform(0.05, 0.4))
    # Thin clutter lines and small blobs: distractors that are not any class.
    for _ in range(int(rng.integers(0, 4))):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p0, p1, _random_color(rng).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(2, max(3, w // 40))), int(rng.integers(2, max(3, h // 40))))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, _random_color(rng).tolist(), -1)
    return img


def _lighting(rng: np.random.Generator, img: np.ndarray, strength: float = 1.0) -> np.ndarray:
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
class _Obj:
    cls: int
    shape: str
    cx: float
    cy: float
    radius: float
    angle: float
    texture_seed: int
    color: np.ndarray


def _paint(canvas: np.ndarray, obj: _Obj, mask: np.ndarray) -> None:
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
    color = obj.color if np.abs(obj.color - under).sum() >= 120 else np.clip(255.0 - under, 0, 255)
    tex = _texture(rng, int(x1 - x0), int(y1 - y0), color.astype(np.float32), rng.uniform(0.05, 0.3))
    canvas[y0:y1, x0:x1] = region * (1 - alpha) + tex * alpha
    # A darker outline on some objects, as real objects have edges of varying contrast.
    if rng.random() < 0.5:
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, (color * 0.4).tolist(), 1, cv2.LINE_AA)


def _render(
    rng: np.random.Generator, background: np.ndarray, objects: Sequence[_Obj], lighting: float = 1.0
) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """Paint objects in order onto a copy of the background; return the image and pixel xyxy boxes.

    Boxes are each shape's full (amodal) extent; objects mostly hidden by later ones are dropped from the
    truth (and the placement code avoids creating them).
    """
    h, w = background.shape[:2]
    canvas = background.copy()
    masks = [_shape_mask(o.shape, w, h, o.cx, o.cy, o.radius, o.angle) for o in objects]
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
    return _lighting(rng, canvas, lighting), truths


def _place_objects(
    rng: np.random.Generator, w: int, h: int, n_classes: int, classes: Sequence[str], max_objects: int = 4
) -> list[_Obj]:
    """Random objects with scale variety; an overlap check keeps earlier objects mostly visible."""
    objs: list[_Obj] = []
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
        if any(_overlap_fraction(b, box) > 0.35 for b in boxes):
            continue
        cls = int(rng.integers(0, n_classes))
        objs.append(
            _Obj(
                cls=cls,
                shape=shape_for_class(classes[cls], cls),
                cx=cx,
                cy=cy,
                radius=radius,
                angle=float(rng.uniform(0, 2 * np.pi)),
                texture_seed=int(rng.integers(0, 2**31)),
                color=_random_color(rng),
            )
        )
        boxes.append(box)
    return objs


def _overlap_fraction(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Fraction of box a covered by box b."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = max(1e-9, (a[2] - a[0]) * (a[3] - a[1]))
    return iw * ih / area


def render_image(
    seed: int, width: int, height: int, classes: Sequence[str] = DEFAULT_CLASSES, max_objects: int = 4
) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """One synthetic BGR image and its (class id, pixel xyxy box) truth, deterministic by seed."""
    rng = np.random.default_rng(seed)
    bg = _background(rng, width, height)
    objs = _place_objects(rng, width, height, len(classes), classes, max_objects)
    return _render(rng, bg, objs)


# --------------------------------------------------------------------------------------------- dataset


def _yaml_quote(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML flow scalar


def make_dataset(
    out: Path,
    n_train: int,
    n_val: int,
    imgsz: int = 320,
    classes: list[str] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a YOLO-format dataset under `out` and return `out` (the dataset root; data.yaml is inside).

    Layout: images/{train,val}/*.jpg, labels/{train,val}/*.txt (class cx cy w h, normalized), data.yaml
    with `names`. Deterministic by seed: image i of a split always comes from the same sub-seed.
    """
    classes = list(classes or DEFAULT_CLASSES)
    if not classes:
        raise ValueError("need at least one class")
    if n_train < 1 or n_val < 1:
        raise ValueError("need at least one training and one validation image")
    out = Path(out)
    total = n_train + n_val
    done = 0
    for split, count, offset in (("train", n_train, 0), ("val", n_val, 1_000_003)):
        img_dir = out / "images" / split
        lbl_dir = out / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            # Sub-seeds independent of the split sizes: growing n_train keeps the first images identical.
            img, truth = render_image(seed * 7_919_993 + offset + i, imgsz, imgsz, classes)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(img_dir / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = []
            for cls, (x0, y0, x1, y1) in truth:
                x0, y0 = max(0.0, x0), max(0.0, y0)
                x1, y1 = min(float(imgsz), x1), min(float(imgsz), y1)
                cx, cy = (x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz
                bw, bh = (x1 - x0) / imgsz, (y1 - y0) / imgsz
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
            (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            done += 1
            if progress:
                progress(done, total)
    # No `path:` key: loaders resolve train/val relative to this file, so the dataset can be moved.
    names = "\n".join(f"  {i}: {_yaml_quote(n)}" for i, n in enumerate(classes))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(
        f"# synthetic shapes dataset, seed {seed}, {n_train} train / {n_val} val images at {imgsz} px\n"
        f"train: images/train\nval: images/val\nnc: {len(classes)}\nnames:\n{names}\n"
    )
    return out


# ----------------------------------------------------------------------------------------------- video


def _fourcc_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        return "mp4v"  # OpenCV's bundled FFmpeg writes and reads this here; avc1/H.264 is unavailable
    if suffix == ".avi":
        return "MJPG"
    raise ValueError(f"video must end in .mp4 or .avi, not {path.name!r}")


def make_video(
    path: Path,
    n_frames: int,
    size: tuple[int, int] = (640, 480),
    fps: float = 10,
    classes: list[str] | None = None,
    seed: int = 0,
    n_objects: int | None = None,
    write_json: bool = True,
) -> list[FrameTruth]:
    """Write a video of shapes moving over a fixed background and return per-frame ground truth.

    Each object moves in its own horizontal lane and bounces off the sides, so objects never overlap and
    every box in the truth is fully visible. Lighting flickers slightly from frame to frame. With
    `write_json`, the truth is also written as `<path>.json` (a `VideoTruth`).
    """
    classes = list(classes or DEFAULT_CLASSES)
    path = Path(path)
    w, h = size
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    rng = np.random.default_rng(seed)
    bg = _background(rng, w, h)
    n = n_objects if n_objects is not None else min(3, max(1, h // 120))
    lane_h = h / n
    objs: list[_Obj] = []
    vel: list[float] = []
    for k in range(n):
        radius = float(min(lane_h * rng.uniform(0.28, 0.4), w * 0.2))
        cls = k % len(classes) if n <= len(classes) else int(rng.integers(0, len(classes)))
        objs.append(
            _Obj(
                cls=cls,
                shape=shape_for_class(classes[cls], cls),
                cx=float(rng.uniform(radius, w - radius)),
                cy=float(lane_h * (k + 0.5)),
                radius=radius,
                angle=float(rng.uniform(0, 2 * np.pi)),
                texture_seed=int(rng.integers(0, 2**31)),
                color=_random_color(rng),
            )
        )
        vel.append(float(rng.uniform(0.01, 0.03) * w * rng.choice([-1, 1])))

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*_fourcc_for(path)), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with fourcc {_fourcc_for(path)}")
    truths: list[FrameTruth] = []
    try:
        for f in range(n_frames):
            frame_rng = np.random.default_rng([seed, f])
            img, boxes = _render(frame_rng, bg, objs, lighting=0.3)
            writer.write(img)
            truths.append(
                FrameTruth(
                    frame=f,
                    time_s=f / float(fps),
                    boxes=[
                        (
                            max(0.0, b[0] / w),
                            max(0.0, b[1] / h),
                            min(1.0, b[2] / w),
                            min(1.0, b[3] / h),
                        )
                        for _, b in boxes
                    ],
                    class_ids=[c for c, _ in boxes],
                    class_names=[classes[c] for c, _ in boxes],
                )
            )
            for o, v in zip(objs, vel, strict=True):
                o.cx += v
                o.angle += 0.05
            for k, o in enumerate(objs):
                if o.cx - o.radius < 0 or o.cx + o.radius > w:
                    vel[k] = -vel[k]
                    o.cx = float(np.clip(o.cx, o.radius, w - o.radius))
    finally:
        writer.release()
    if write_json:
        truth = VideoTruth(
            video=path.name, fps=float(fps), width=w, height=h, n_frames=n_frames, classes=classes, seed=seed,
            frames=truths,
        )
        truth_path(path).write_text(truth.model_dump_json(indent=1))
    return truths


def truth_path(video: Path) -> Path:
    """Where make_video writes a video's ground truth: `clip.mp4` -> `clip.mp4.json`."""
    return Path(str(video) + ".json")


def load_video_truth(video_or_json: Path) -> VideoTruth:
    p = Path(video_or_json)
    if p.suffix != ".json":
        p = truth_path(p)
    return VideoTruth.model_validate_json(p.read_text())
