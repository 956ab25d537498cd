"""Detection datasets: YOLO format and COCO JSON, loaded into one in-memory view, and validated.

YOLO layouts understood (builder.data.yolo_format):
- `images/{train,val}` + `labels/{train,val}` + a data yaml (`data.yaml`, `dataset.yaml`, or the only
  `*.yaml` in the root) with `names` (list or {id: name}) and `train`/`val` entries (dirs, lists of dirs
  or .txt image lists), optionally `path`;
- the `train/images`, `valid/images` (Roboflow-style) variant, whose yaml often says `../train/images`;
- no yaml at all but `classes.txt` / `obj.names` and one of the layouts above.
A label file is the image path with its last `images` segment replaced by `labels` and a `.txt` suffix.

COCO (builder.data.coco_format): `annotations/instances_{train,val}*.json` (+ `images/{split}` or
`{split}2017/`), per-split `{train,valid}/_annotations.coco.json` with the images beside it, or a single
JSON file. Category ids are mapped to contiguous class ids in ascending category-id order.

Validation (`validate_dataset`, builder.data.validation) reports problems with file and line;
`ValidationReport.usable` is False when any error-severity problem exists, and the trainer then refuses
to start.

This module is the public entry point; the names below live in the modules that implement them.
"""

from __future__ import annotations

from builder.data.layout import (
    BOX_TOLERANCE,
    IMAGE_SUFFIXES,
    SPLIT_ALIASES,
    DatasetError,
    Item,
    SplitSource,
    label_path_for,
)
from builder.data.loading import load_dataset
from builder.data.records import Dataset
from builder.data.report import Problem, SplitStats, ValidationReport
from builder.data.validation import validate_dataset
from builder.data.yolo_view import write_yolo_view

__all__ = [
    "BOX_TOLERANCE", "IMAGE_SUFFIXES", "SPLIT_ALIASES", "Dataset", "DatasetError", "Item", "Problem", "SplitSource",
    "SplitStats", "ValidationReport", "label_path_for", "load_dataset", "validate_dataset", "write_yolo_view",
]
