"""Reading a split image by image: its readable images and their boxes; problems go to a list when asked."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import cv2

from builder.data.coco_format import coco_boxes
from builder.data.layout import DatasetLayout, Item, file_size, label_path_for
from builder.data.report import Problem, SplitStats, add_problem
from builder.data.yolo_format import yolo_boxes


def _image_size(path: Path, decode: bool) -> tuple[int, int] | None:
    """(width, height), or None when unreadable. decode=False reads only the header (PIL) when available."""
    if file_size(path) <= 0:
        return None
    if not decode:
        try:
            from PIL import Image

            with Image.open(path) as im:
                w, h = im.size
            return (int(w), int(h)) if w > 0 and h > 0 else None
        except ImportError:
            pass
        except Exception:
            return None
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return None
    return int(img.shape[1]), int(img.shape[0])


def _check_duplicate(img: Path, split: str, seen: dict[str, tuple[str, Path]], collect: list[Problem] | None) -> None:
    """The same bytes twice: an error across splits (train/val leakage), a warning within one."""
    digest = hashlib.sha1(img.read_bytes()).hexdigest()
    if digest in seen:
        other_split, other = seen[digest]
        sev = "error" if other_split != split else "warning"
        why = "train/val leakage" if sev == "error" else "same content twice"
        add_problem(collect, sev, "duplicate_image", f"identical to {other} ({other_split}): {why}", img)
    else:
        seen[digest] = (split, img)


def read_split(
    ds: DatasetLayout,
    split: str,
    collect: list[Problem] | None,
    stats: SplitStats | None = None,
    check_images: bool = False,
    seen: dict[str, tuple[str, Path]] | None = None,
) -> tuple[list[Item], SplitStats]:
    """Every readable image of the split with its boxes; problems go to `collect` (None: ignored)."""
    src = ds.source(split)
    stats = stats if stats is not None else SplitStats()
    per_class: Counter[int] = Counter()
    items: list[Item] = []
    stats.images = len(src.images)
    label_owner: dict[Path, Path] = {}
    for img in src.images:
        size = _image_size(img, decode=check_images) if img.is_file() else None
        if not img.is_file():
            add_problem(collect, "error", "missing_image", "image file listed but not found", img)
        elif size is None:
            add_problem(collect, "error", "unreadable_image", "empty or undecodable image", img)
        if seen is not None and img.is_file():
            _check_duplicate(img, split, seen, collect)
        if size is None:
            continue
        stats.readable_images += 1
        w, h = size
        if src.coco is not None:
            boxes, classes, has_labels = coco_boxes(ds, src, img, w, h, collect)
        else:
            lbl = label_path_for(img)
            if lbl in label_owner:
                add_problem(collect, "error", "shared_label", f"label file also claimed by {label_owner[lbl].name}", img)
            label_owner[lbl] = img
            boxes, classes, has_labels = yolo_boxes(lbl, w, h, ds.num_classes, collect)
        stats.labelled_images += int(has_labels)
        stats.boxes += len(boxes)
        per_class.update(int(c) for c in classes)
        items.append(Item(image=img, boxes=boxes, classes=classes, width=w, height=h))
    if src.coco is None and collect is not None and src.images:
        _orphan_labels(src.images, collect)
    stats.per_class = {ds.class_names[k] if k < ds.num_classes else str(k): v for k, v in sorted(per_class.items())}
    return items, stats


def _orphan_labels(images: Iterable[Path], collect: list[Problem]) -> None:
    """Not an error by itself; noted so users spot a label folder that does not match the images."""
    dirs = {label_path_for(i).parent for i in images}
    stems = {label_path_for(i) for i in images}
    for d in sorted(dirs):
        if not d.is_dir():
            continue
        for lbl in sorted(d.glob("*.txt")):
            if lbl not in stems and lbl.name != "classes.txt":
                add_problem(collect, "warning", "orphan_label", "label file without a matching image", lbl)
