"""A "hard" slice for flywheel experiments: the same synthetic scenes, but dim (low light, sensor noise).

The shapes dataset (builder.data.synth) varies the gain only within 0.65-1.25 (builder.data.synth_scene
`apply_lighting`), so a model trained on it has never seen a scene at a fifth of that light. Dusk on a real
camera looks like this: little signal, the same read noise, so a much lower signal-to-noise ratio.

Only numpy + OpenCV (+ pydantic via builder.data.synth): the agent's Python 3.11 tests may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from builder.data.synth import DEFAULT_CLASSES, render_image

DIM_GAIN = (0.10, 0.20)  # share of the light the dataset's scenes get
DIM_NOISE = (2.0, 5.0)  # sensor noise sigma, in 8-bit levels (unchanged by the low light: read noise)


@dataclass(frozen=True)
class Scene:
    """One rendered scene: image (BGR uint8), pixel xyxy boxes and class ids, and whether it is dimmed."""

    seed: int
    image: np.ndarray
    boxes: np.ndarray  # (n, 4) float32 pixel xyxy
    classes: np.ndarray  # (n,) int64
    hard: bool


def dim(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The scene at a fifth to a tenth of the light, with sensor noise: uint8 BGR, same shape."""
    gain = rng.uniform(*DIM_GAIN)
    noise = rng.normal(0.0, rng.uniform(*DIM_NOISE), img.shape)
    return np.clip(img.astype(np.float32) * gain + noise, 0, 255).astype(np.uint8)


def render_scene(seed: int, imgsz: int, classes: Sequence[str] = DEFAULT_CLASSES, hard: bool = False) -> Scene:
    """The dataset renderer's scene for `seed` (the same objects either way), dimmed when `hard`."""
    img, truth = render_image(seed, imgsz, imgsz, classes)
    if hard:
        img = dim(img, np.random.default_rng([seed, 17]))
    boxes = np.clip(np.array([b for _, b in truth], np.float32).reshape(-1, 4), 0, imgsz)
    cls = np.array([c for c, _ in truth], np.int64)
    return Scene(seed, img, boxes, cls, hard)


def render_scenes(seeds: Sequence[int], imgsz: int, classes: Sequence[str], hard: Sequence[bool]) -> list[Scene]:
    return [render_scene(s, imgsz, classes, h) for s, h in zip(seeds, hard, strict=True)]


def write_images(scenes: Sequence[Scene], out: Path) -> list[Path]:
    """Each scene as `out/<seed>.png` (lossless: a held-out set graded as rendered); the paths, in order."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for sc in scenes:
        p = out / f"{sc.seed}.png"
        cv2.imwrite(str(p), sc.image)
        paths.append(p)
    return paths


def write_slideshow(scenes: Sequence[Scene], path: Path, fps: float, repeat: int = 1) -> Path:
    """A video (MJPG .avi) showing each scene for `repeat` frames, in order: a camera watching these scenes."""
    h, w = scenes[0].image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for sc in scenes:
            for _ in range(repeat):
                writer.write(sc.image)
    finally:
        writer.release()
    return path


def nearest_scene(image: np.ndarray, scenes: Sequence[Scene]) -> tuple[Scene, float]:
    """The scene an image (a camera's JPEG of it) shows, by mean absolute difference; and that difference."""
    best, best_d = scenes[0], float("inf")
    for sc in scenes:
        if sc.image.shape != image.shape:
            continue
        d = float(np.mean(np.abs(sc.image.astype(np.int16) - image.astype(np.int16))))
        if d < best_d:
            best, best_d = sc, d
    return best, best_d
