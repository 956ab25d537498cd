"""Benchmark dataset v2 (`edge-builder synth photo`): class shapes composited onto real photographs.

Each image: a random crop of a shipped photo (builder.data.photo_backgrounds; flipped, colour-jittered), 1-6
labelled objects (builder.data.synth_objects: a class's shape in the class's colour family) spread over three
size bands so that every head stride sees positives at 320 px, 0-3 unlabelled look-alike distractors, 0-2
occluders cut from other photo crops partly covering objects, a drop shadow and shading per object, then
lighting (gain, gamma, a gradient), sensor noise, blur and JPEG compression of varied strength. Labels are
each object's full box; an object less than 60% visible is dropped from the labels (as in builder.data.synth).

Splits train / val / test (data.yaml names all three; `edge-builder train` trains on train and selects its
checkpoint on val; test is for the reported numbers only). Deterministic by seed, image by image: image i of a
split always comes from the seed sequence (seed, split, i), so growing a split keeps its first images.
numpy + OpenCV only (see builder.data.synth).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from builder.data.photo_backgrounds import load_photos, photo_background, random_crop
from builder.data.strides import STRIDES, box_size, stride_for_size
from builder.data.synth import DEFAULT_CLASSES
from builder.data.synth_objects import (
    CLASS_ASPECT,
    STRETCH_ASPECT,
    PhotoObject,
    object_extent,
    object_mask,
    paint_object,
)
from builder.data.synth_scene import apply_lighting, class_hue, off_class_hue, overlap_fraction
from builder.data.synth_shapes import KNOWN_SHAPES, shape_for_class

REFERENCE_SIZE = 320  # the size bands are set for this input size and scale with the image
# Box size L = sqrt(w * h) per stride at 320 px (builder.data.strides counts L < 32 at 8, 32-64 at 16, >= 64 at 32).
SIZE_BANDS: dict[int, tuple[float, float]] = {8: (10.0, 31.0), 16: (33.0, 62.0), 32: (66.0, 160.0)}
SPLITS = ("train", "val", "test")
MAX_OBJECTS, MAX_DISTRACTORS, MAX_OCCLUDERS = 6, 3, 2
_MIN_VISIBLE = 0.6
_MAX_OVERLAP = 0.35  # of an earlier thing's box covered by a later one

Truth = list[tuple[int, tuple[float, float, float, float]]]


def _size(rng: np.random.Generator, imgsz: int) -> float:
    """A box size from a uniformly chosen band, log-uniform within it, scaled to the image size."""
    lo, hi = SIZE_BANDS[STRIDES[int(rng.integers(0, len(STRIDES)))]]
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * imgsz / REFERENCE_SIZE


def _distractor(rng: np.random.Generator, classes: Sequence[str]) -> tuple[str, float, float]:
    """(shape, aspect, hue) of a look-alike: off-colour, stretched, or a shape no class uses."""
    n = len(classes)
    k = int(rng.integers(0, n))
    spare = [s for s in KNOWN_SHAPES if s not in {shape_for_class(c, i) for i, c in enumerate(classes)}]
    kind = int(rng.integers(0, 3 if spare else 2))
    if kind == 0:
        return shape_for_class(classes[k], k), float(rng.uniform(*CLASS_ASPECT)), off_class_hue(rng, n)
    if kind == 1:
        return shape_for_class(classes[k], k), float(rng.uniform(*STRETCH_ASPECT)), class_hue(rng, k, n)
    return spare[int(rng.integers(0, len(spare)))], float(rng.uniform(*CLASS_ASPECT)), float(rng.uniform(0, 180))


def _new_thing(rng: np.random.Generator, imgsz: int, classes: Sequence[str], labelled: bool) -> PhotoObject | None:
    """A labelled object or a distractor at a random place that keeps its whole box inside the image."""
    if labelled:
        cls = int(rng.integers(0, len(classes)))
        shape, aspect, hue = shape_for_class(classes[cls], cls), float(rng.uniform(*CLASS_ASPECT)), class_hue(
            rng, cls, len(classes))
    else:
        cls = -1
        shape, aspect, hue = _distractor(rng, classes)
    o = PhotoObject(cls=cls, shape=shape, cx=0.0, cy=0.0, size=_size(rng, imgsz), aspect=aspect,
                    angle=float(rng.uniform(0, 2 * np.pi)), hue=hue, texture_seed=int(rng.integers(0, 2**31)))
    w, h = object_extent(o)
    if w + 2 >= imgsz or h + 2 >= imgsz:
        return None
    o.cx = float(rng.uniform(w / 2 + 1, imgsz - w / 2 - 1))
    o.cy = float(rng.uniform(h / 2 + 1, imgsz - h / 2 - 1))
    return o


def place_things(rng: np.random.Generator, imgsz: int, classes: Sequence[str]) -> list[PhotoObject]:
    """Objects and distractors in paint order; a later one covers at most 35% of an earlier one's box."""
    n_obj = int(rng.integers(1, MAX_OBJECTS + 1))
    n_dis = int(rng.integers(0, MAX_DISTRACTORS + 1))
    wanted = [True] * n_obj + [False] * n_dis
    wanted = [wanted[i] for i in rng.permutation(len(wanted))]
    things: list[PhotoObject] = []
    boxes: list[tuple[float, float, float, float]] = []
    for labelled in wanted:
        for _ in range(8):
            o = _new_thing(rng, imgsz, classes, labelled)
            if o is None:
                continue
            w, h = object_extent(o)
            box = (o.cx - w / 2, o.cy - h / 2, o.cx + w / 2, o.cy + h / 2)
            if all(overlap_fraction(b, box) <= _MAX_OVERLAP for b in boxes):
                things.append(o)
                boxes.append(box)
                break
    return things


def _occluder_mask(rng: np.random.Generator, target: PhotoObject, imgsz: int) -> np.ndarray:
    """A bar or a blob across part of `target`."""
    mask = np.zeros((imgsz, imgsz), np.uint8)
    a = rng.uniform(0, 2 * np.pi)
    off = target.size * rng.uniform(0.3, 0.6)
    c = (target.cx + off * np.cos(a), target.cy + off * np.sin(a))
    if rng.random() < 0.5:  # a bar (a branch, a pole, a cable)
        length, thick = target.size * rng.uniform(0.8, 2.0), target.size * rng.uniform(0.12, 0.3)
        rect = ((float(c[0]), float(c[1])), (float(length), float(thick)), float(rng.uniform(0, 180)))
        cv2.fillPoly(mask, [np.round(cv2.boxPoints(rect) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    else:  # a blob (a leaf, a hand)
        axes = (max(1, int(target.size * rng.uniform(0.2, 0.4))), max(1, int(target.size * rng.uniform(0.15, 0.35))))
        cv2.ellipse(mask, (int(c[0]), int(c[1])), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
    return mask


def add_occluders(
    rng: np.random.Generator, canvas: np.ndarray, photos: tuple[np.ndarray, ...], things: Sequence[PhotoObject],
    masks: Sequence[np.ndarray],
) -> np.ndarray:
    """Paint 0-2 photo-textured occluders over labelled objects; return their union (bool). An occluder that
    would hide more than 35% of any object is not painted."""
    imgsz = canvas.shape[0]
    covered = np.zeros((imgsz, imgsz), bool)
    labelled = [i for i, o in enumerate(things) if o.cls >= 0]
    for _ in range(int(rng.integers(0, MAX_OCCLUDERS + 1))):
        if not labelled:
            break
        m = _occluder_mask(rng, things[labelled[int(rng.integers(0, len(labelled)))]], imgsz)
        on = m > 127
        if any(float((on & (mk > 127)).sum()) > _MAX_OVERLAP * max(1, int((mk > 127).sum())) for mk in masks):
            continue
        patch = random_crop(rng, photos, imgsz).astype(np.float32) * rng.uniform(0.6, 1.1)
        alpha = (m.astype(np.float32) / 255.0)[..., None]
        canvas[:] = canvas * (1 - alpha) + patch * alpha
        covered |= on
    return covered


def visible_truth(things: Sequence[PhotoObject], masks: Sequence[np.ndarray], occluded: np.ndarray) -> Truth:
    """(class, pixel xyxy) of every labelled object at least 60% visible; boxes are the full (amodal) extent."""
    covered = occluded.copy()
    truth: Truth = []
    for o, m in reversed(list(zip(things, masks, strict=True))):
        on = m > 127
        area = int(on.sum())
        visible = float((on & ~covered).sum()) / max(1, area)
        covered |= on
        if o.cls < 0 or area < 4 or visible < _MIN_VISIBLE:
            continue
        ys, xs = np.nonzero(on)
        truth.append((o.cls, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))))
    truth.reverse()
    return truth


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Lighting and sensor noise (builder.data.synth_scene.apply_lighting), then blur of varied kind."""
    img = apply_lighting(rng, canvas, float(rng.uniform(0.6, 1.3)))
    r = rng.random()
    if r < 0.25:  # out of focus
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.6, 1.5)))
    elif r < 0.35:  # motion
        n = int(rng.integers(3, 8))
        line = np.zeros((n, n), np.float32)
        line[n // 2, :] = 1.0 / n
        rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        kernel = np.asarray(cv2.warpAffine(line, rot, (n, n)), np.float32)
        img = cv2.filter2D(img, -1, kernel / max(1e-6, float(kernel.sum())))
    return img


def render_photo_scene(
    seed: Sequence[int], imgsz: int, classes: Sequence[str], photos: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, Truth, int]:
    """One BGR uint8 image, its truth (class, pixel xyxy), and the JPEG quality to store it with."""
    rng = np.random.default_rng(list(seed))
    canvas = photo_background(rng, photos, imgsz)
    things = place_things(rng, imgsz, classes)
    masks = [object_mask(o, imgsz, imgsz) for o in things]
    for o, m in zip(things, masks, strict=True):
        paint_object(rng, canvas, o, m)
    occluded = add_occluders(rng, canvas, photos, things, masks)
    truth = visible_truth(things, masks, occluded)
    return _finish(rng, canvas), truth, int(rng.integers(70, 96))


# --------------------------------------------------------------------------------------------- dataset


def _yolo_lines(truth: Truth, imgsz: int) -> list[str]:
    return [f"{c} {(x0 + x1) / 2 / imgsz:.6f} {(y0 + y1) / 2 / imgsz:.6f} {(x1 - x0) / imgsz:.6f} {(y1 - y0) / imgsz:.6f}"
            for c, (x0, y0, x1, y1) in truth]


def _split_counts(n_train: int, n_val: int, n_test: int) -> dict[str, int]:
    if n_train < 1 or n_val < 1 or n_test < 0:
        raise ValueError("need at least one training and one validation image (and no negative test count)")
    return {"train": n_train, "val": n_val, "test": n_test}


def make_photo_dataset(
    out: Path,
    n_train: int = 800,
    n_val: int = 200,
    n_test: int = 300,
    imgsz: int = 320,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    backgrounds: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write benchmark dataset v2 (YOLO format) under `out` and return `out`.

    Layout: images/{train,val,test}/*.jpg, labels/{train,val,test}/*.txt, data.yaml (train/val/test, names) and
    summary.json (objects per split, class and stride at the reference 320 px). `backgrounds`: a folder of your
    own photos instead of the shipped ones.
    """
    names = list(classes or DEFAULT_CLASSES)
    if not names or len(set(names)) != len(names):
        raise ValueError("need distinct class names")
    if seed < 0 or imgsz < 64:
        raise ValueError("need seed >= 0 and imgsz >= 64")
    counts = _split_counts(n_train, n_val, n_test)
    photos = load_photos(str(backgrounds) if backgrounds is not None else None)
    out = Path(out)
    total, done = sum(counts.values()), 0
    summary: dict[str, dict[str, object]] = {}
    for split_id, split in enumerate(SPLITS):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        truths: list[Truth] = []
        for i in range(counts[split]):
            img, truth, quality = render_photo_scene((seed, split_id, i), imgsz, names, photos)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(out / "images" / split / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            lines = _yolo_lines(truth, imgsz)
            (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            truths.append(truth)
            done += 1
            if progress:
                progress(done, total)
        summary[split] = split_summary(truths, imgsz, names)
    _write_yaml(out, names, counts, imgsz, seed)
    (out / "summary.json").write_text(json.dumps({"seed": seed, "imgsz": imgsz, "splits": summary}, indent=1) + "\n")
    return out


def split_summary(truths: Sequence[Truth], imgsz: int, classes: Sequence[str]) -> dict[str, object]:
    """Images, objects, objects per class and per stride (sizes scaled to 320 px, builder.data.strides)."""
    per_stride = dict.fromkeys(STRIDES, 0)
    per_class = dict.fromkeys(classes, 0)
    for truth in truths:
        for c, (x0, y0, x1, y1) in truth:
            per_stride[stride_for_size(box_size(x1 - x0, y1 - y0) * REFERENCE_SIZE / imgsz)] += 1
            per_class[classes[c]] += 1
    return {"images": len(truths), "objects": sum(per_class.values()), "per_class": per_class,
            "per_stride_at_320": {str(s): n for s, n in per_stride.items()}}


def _write_yaml(out: Path, names: Sequence[str], counts: dict[str, int], imgsz: int, seed: int) -> None:
    # No `path:` key: loaders resolve the splits relative to this file, so the dataset can be moved. An empty
    # test split is left out of the yaml (a listed split must have images).
    splits = "".join(f"{s}: images/{s}\n" for s in SPLITS if counts[s] > 0)
    lines = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(names))
    (out / "data.yaml").write_text(
        f"# benchmark dataset v2 (objects on real photos), seed {seed}, {counts['train']} train / {counts['val']} val"
        f" / {counts['test']} test images at {imgsz} px\n{splits}nc: {len(names)}\nnames:\n{lines}\n"
    )
