"""load_dataset: pick the format and layout of a dataset path (see builder.data.dataset)."""

from __future__ import annotations

from pathlib import Path

from builder.data.coco_format import find_coco_jsons, load_coco_files, split_from_name
from builder.data.layout import DatasetError, DatasetLayout
from builder.data.records import Dataset
from builder.data.yolo_format import discover_yolo_splits, find_yaml, load_yolo


def load_dataset(path: Path | str) -> Dataset:
    """Load a YOLO-format or COCO-JSON dataset (see builder.data.dataset for the layouts understood)."""
    return Dataset.of(_layout(Path(path).expanduser()))


def _layout(p: Path) -> DatasetLayout:
    if not p.exists():
        raise DatasetError(f"{p} does not exist")
    if p.is_file() and p.suffix.lower() == ".json":
        # A lone JSON without a split in its name serves as the evaluation split.
        return load_coco_files(p.parent, {split_from_name(p.name) or "val": p})
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        return load_yolo(p.parent, p)
    if not p.is_dir():
        raise DatasetError(f"{p} is neither a dataset directory, a data yaml nor a COCO JSON file")
    yaml_file = find_yaml(p)
    if yaml_file is not None:
        return load_yolo(p, yaml_file)
    coco = find_coco_jsons(p)
    if coco:
        return load_coco_files(p, coco)
    if discover_yolo_splits(p):
        return load_yolo(p, None)
    raise DatasetError(
        f"{p}: no data yaml, no COCO annotations and no images/{{train,val}} or {{train,valid}}/images folders"
    )
