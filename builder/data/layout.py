"""What a dataset loader finds on disk: class names, each split's images and where their boxes come from.

The format modules (builder.data.yolo_format, builder.data.coco_format) build a `DatasetLayout`;
builder.data.records adds reading the boxes (`Dataset.items`). This module imports nothing of the project.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Boxes may poke out of the image by this fraction of its size (annotation tools round); beyond: error.
BOX_TOLERANCE = 0.01


class DatasetError(Exception):
    """The dataset cannot be read at all (no names, no images, unreadable annotation file...)."""


@dataclass
class Item:
    """One image and its boxes. Boxes are pixel xyxy float32 (N, 4); classes int64 (N,)."""

    image: Path
    boxes: np.ndarray
    classes: np.ndarray
    width: int
    height: int


@dataclass
class SplitSource:
    """Where one split's annotations come from: YOLO label files or a parsed COCO JSON."""

    images: list[Path]
    coco: dict[str, Any] | None = None
    coco_file: Path | None = None
    coco_images: dict[str, dict[str, Any]] = field(default_factory=dict)  # image path -> coco image record


@dataclass
class DatasetLayout:
    """A loaded dataset's class names and splits (images, annotation sources); boxes are read on demand."""

    root: Path
    format: Literal["yolo", "coco"]
    class_names: list[str]
    yaml_file: Path | None = None
    sources: dict[str, SplitSource] = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> list[str]:
        return list(self.sources)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def images(self, split: str) -> list[Path]:
        return list(self.source(split).images)

    def source(self, split: str) -> SplitSource:
        split = SPLIT_ALIASES.get(split, split)
        if split not in self.sources:
            raise DatasetError(f"dataset {self.root} has no {split!r} split (has: {', '.join(self.splits) or 'none'})")
        return self.sources[split]

    def fingerprint(self) -> str:
        """sha256 over class names and every file's relative path, size and mtime-free content hash of labels.

        Cheap enough for big datasets: images contribute path and size, label/annotation files their bytes.
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.class_names).encode())
        for split in sorted(self.sources):
            src = self.sources[split]
            h.update(split.encode())
            for img in sorted(src.images):
                h.update(rel_path(img, self.root).encode())
                h.update(str(file_size(img)).encode())
                if src.coco is None:
                    lbl = label_path_for(img)
                    if lbl.is_file():
                        h.update(lbl.read_bytes())
            if src.coco_file is not None:
                h.update(src.coco_file.read_bytes())
        return h.hexdigest()


def label_path_for(image: Path) -> Path:
    """YOLO convention: replace the last `images` path segment with `labels`, suffix `.txt`."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")  # labels beside the images (darknet style)


def file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1


def rel_path(p: Path, root: Path) -> str:
    try:
        return str(p.resolve().relative_to(root))
    except ValueError:
        return str(p)
