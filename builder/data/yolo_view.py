"""A clean YOLO-format view of any loaded dataset, as the training engine reads it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from builder.data.layout import Item
from builder.data.records import Dataset


def label_rows(item: Item) -> list[str]:
    rows = []
    for (x0, y0, x1, y1), c in zip(item.boxes.tolist(), item.classes.tolist(), strict=True):
        rows.append(
            f"{c} {(x0 + x1) / 2 / item.width:.6f} {(y0 + y1) / 2 / item.height:.6f} "
            f"{(x1 - x0) / item.width:.6f} {(y1 - y0) / item.height:.6f}"
        )
    return rows


def write_yolo_view(ds: Dataset, out: Path, splits: Iterable[str] = ("train", "val")) -> Path:
    """A clean YOLO-format view of any loaded dataset for the trainer; returns its data.yaml.

    Images are symlinked (no copy) into `out/images/<split>/` and labels rewritten from the parsed boxes
    into `out/labels/<split>/`, so the training engine sees exactly what validation accepted, whatever
    the source layout (YOLO variants or COCO).
    """
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for split in splits:
        img_dir = out / "images" / split
        lbl_dir = out / "labels" / split
        for d in (img_dir, lbl_dir):
            if d.exists():
                for f in d.iterdir():
                    f.unlink()
            d.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(ds.items(split)):
            stem = f"{i:06d}_{item.image.stem}"
            link = img_dir / f"{stem}{item.image.suffix.lower()}"
            os.symlink(item.image.resolve(), link)
            rows = label_rows(item)
            (lbl_dir / f"{stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
        written[split] = str(img_dir.resolve())
    cfg = {"path": str(out.resolve()), **written, "nc": ds.num_classes, "names": dict(enumerate(ds.class_names))}
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return yaml_path
