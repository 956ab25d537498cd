"""Deterministic synthetic detection data: a YOLO-format dataset and videos with per-frame ground truth.

Only numpy + OpenCV (+ pydantic): the agent's Python 3.11 tests import this module too, so it must never
pull in torch, TensorFlow or onnx.

Scenes are textured shapes (circle, square, triangle, ... one shape per class; builder.data.synth_shapes) of
varied scale, rotation and colour, partly occluding each other, on varied backgrounds (gradients, stripes,
checkers, noise blobs), under varied lighting (gain, gamma, a lighting gradient, sensor noise, slight blur;
builder.data.synth_scene). The same renderer draws dataset images and video frames, so a model trained on
the dataset sees the video's distribution.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, Field

from builder.data.synth_scene import (
    DEFAULT_CLASSES,
    SceneObject,
    check_palette,
    object_colour,
    render,
    render_background,
    render_image,
)
from builder.data.synth_shapes import shape_for_class

# Names other code imports from here.
__all__ = [
    "DEFAULT_CLASSES", "FrameTruth", "VideoTruth", "load_video_truth", "make_dataset", "make_video", "render_image",
    "shape_for_class", "truth_path",
]


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


# --------------------------------------------------------------------------------------------- dataset


def _yaml_quote(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML flow scalar


def _yolo_lines(truth: list[tuple[int, tuple[float, float, float, float]]], imgsz: int) -> list[str]:
    lines = []
    for cls, (x0, y0, x1, y1) in truth:
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(imgsz), x1), min(float(imgsz), y1)
        cx, cy = (x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz
        bw, bh = (x1 - x0) / imgsz, (y1 - y0) / imgsz
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    return lines


def make_dataset(
    out: Path,
    n_train: int,
    n_val: int,
    imgsz: int = 320,
    classes: list[str] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    palette: str = "random",
) -> Path:
    """Write a YOLO-format dataset under `out` and return `out` (the dataset root; data.yaml is inside).

    Layout: images/{train,val}/*.jpg, labels/{train,val}/*.txt (class cx cy w h, normalized), data.yaml
    with `names`. Deterministic by seed: image i of a split always comes from the same sub-seed. `palette`
    "class" colours each object from its class's hue sector (builder.data.synth_scene.object_colour).
    """
    classes = list(classes or DEFAULT_CLASSES)
    if not classes:
        raise ValueError("need at least one class")
    check_palette(palette)
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
            img, truth = render_image(seed * 7_919_993 + offset + i, imgsz, imgsz, classes, palette=palette)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(img_dir / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = _yolo_lines(truth, imgsz)
            (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            done += 1
            if progress:
                progress(done, total)
    # No `path:` key: loaders resolve train/val relative to this file, so the dataset can be moved.
    names = "\n".join(f"  {i}: {_yaml_quote(n)}" for i, n in enumerate(classes))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(
        f"# synthetic shapes dataset, seed {seed}, {n_train} train / {n_val} val images at {imgsz} px"
        f"{'' if palette == 'random' else f', {palette} colours'}\n"
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


def _lane_objects(
    rng: np.random.Generator, w: int, h: int, n: int, classes: list[str], palette: str = "random"
) -> tuple[list[SceneObject], list[float]]:
    """One object per horizontal lane and its horizontal speed (pixels per frame)."""
    lane_h = h / n
    objs: list[SceneObject] = []
    vel: list[float] = []
    for k in range(n):
        radius = float(min(lane_h * rng.uniform(0.28, 0.4), w * 0.2))
        cls = k % len(classes) if n <= len(classes) else int(rng.integers(0, len(classes)))
        objs.append(
            SceneObject(
                cls=cls,
                shape=shape_for_class(classes[cls], cls),
                cx=float(rng.uniform(radius, w - radius)),
                cy=float(lane_h * (k + 0.5)),
                radius=radius,
                angle=float(rng.uniform(0, 2 * np.pi)),
                texture_seed=int(rng.integers(0, 2**31)),
                color=object_colour(rng, cls, len(classes), palette),
                keep_hue=palette == "class",
            )
        )
        vel.append(float(rng.uniform(0.01, 0.03) * w * rng.choice([-1, 1])))
    return objs, vel


def _move(objs: list[SceneObject], vel: list[float], w: int) -> None:
    """One frame step: move along the lane, turn a little, bounce off the sides."""
    for o, v in zip(objs, vel, strict=True):
        o.cx += v
        o.angle += 0.05
    for k, o in enumerate(objs):
        if o.cx - o.radius < 0 or o.cx + o.radius > w:
            vel[k] = -vel[k]
            o.cx = float(np.clip(o.cx, o.radius, w - o.radius))


def _frame_truth(f: int, fps: float, boxes: list[tuple[int, tuple[float, float, float, float]]], w: int, h: int,
                 classes: list[str]) -> FrameTruth:
    return FrameTruth(
        frame=f,
        time_s=f / float(fps),
        boxes=[(max(0.0, b[0] / w), max(0.0, b[1] / h), min(1.0, b[2] / w), min(1.0, b[3] / h)) for _, b in boxes],
        class_ids=[c for c, _ in boxes],
        class_names=[classes[c] for c, _ in boxes],
    )


def make_video(
    path: Path,
    n_frames: int,
    size: tuple[int, int] = (640, 480),
    fps: float = 10,
    classes: list[str] | None = None,
    seed: int = 0,
    n_objects: int | None = None,
    write_json: bool = True,
    palette: str = "random",
) -> list[FrameTruth]:
    """Write a video of shapes moving over a fixed background and return per-frame ground truth.

    Each object moves in its own horizontal lane and bounces off the sides, so objects never overlap and
    every box in the truth is fully visible. Lighting flickers slightly from frame to frame. With
    `write_json`, the truth is also written as `<path>.json` (a `VideoTruth`). `palette` as in make_dataset.
    """
    classes = list(classes or DEFAULT_CLASSES)
    check_palette(palette)
    path = Path(path)
    w, h = size
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    rng = np.random.default_rng(seed)
    bg = render_background(rng, w, h)
    n = n_objects if n_objects is not None else min(3, max(1, h // 120))
    objs, vel = _lane_objects(rng, w, h, n, classes, palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*_fourcc_for(path)), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with fourcc {_fourcc_for(path)}")
    truths: list[FrameTruth] = []
    try:
        for f in range(n_frames):
            img, boxes = render(np.random.default_rng([seed, f]), bg, objs, lighting=0.3)
            writer.write(img)
            truths.append(_frame_truth(f, fps, boxes, w, h, classes))
            _move(objs, vel, w)
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
