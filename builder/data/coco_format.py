"""COCO-JSON datasets: finding the annotation files, loading them, and reading an image's boxes.

Layouts understood: `annotations/instances_{train,val}*.json` (+ `images/{split}` or `{split}2017/`),
per-split `{train,valid}/_annotations.coco.json` with the images beside it, or a single JSON file. Category
ids are mapped to contiguous class ids in ascending category-id order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from builder.data.layout import BOX_TOLERANCE, SPLIT_ALIASES, DatasetError, DatasetLayout, SplitSource
from builder.data.report import Problem, add_problem


def split_from_name(name: str) -> str | None:
    low = name.lower()
    for key in ("train", "valid", "val", "test"):
        if key in low:
            return SPLIT_ALIASES[key]
    return None


def find_coco_jsons(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for j in sorted(root.glob("annotations/*.json")) + sorted(root.glob("*/_annotations.coco.json")):
        split = split_from_name(j.name) or split_from_name(j.parent.name)
        if split and split not in found:
            found[split] = j
    if not found:
        jsons = sorted(root.glob("*.json"))
        for j in jsons:
            split = split_from_name(j.name)
            if split and split not in found:
                found[split] = j
        if not found and len(jsons) == 1:
            found["val"] = jsons[0]
    return found


def _parse(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    parsed: dict[str, dict[str, Any]] = {}
    for split, f in files.items():
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{f}: not a readable COCO JSON file: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("categories"), list
        ):
            raise DatasetError(f"{f}: COCO JSON needs 'images' and 'categories' lists")
        parsed[split] = data
    return parsed


def load_coco_files(root: Path, files: dict[str, Path]) -> DatasetLayout:
    parsed = _parse(files)
    # One class list for all splits: the union of categories, ordered by category id.
    cats: dict[int, str] = {}
    for data in parsed.values():
        for c in data["categories"]:
            try:
                cats.setdefault(int(c["id"]), str(c["name"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"bad COCO category {c!r}") from exc
    if not cats:
        raise DatasetError(f"{root}: COCO categories are empty")
    names = [cats[k] for k in sorted(cats)]
    sources: dict[str, SplitSource] = {}
    for split, data in parsed.items():
        f = files[split]
        dirs = [f.parent, f.parent.parent / "images" / split, f.parent.parent / f"{split}2017", root / "images" / split,
                root / "images", root / split, root]
        images: list[Path] = []
        records: dict[str, dict[str, Any]] = {}
        for rec in data["images"]:
            name = str(rec.get("file_name", ""))
            cand = next((d / name for d in dirs if (d / name).is_file()), dirs[0] / name)
            images.append(cand)
            records[str(cand)] = rec
        sources[split] = SplitSource(images=images, coco=data, coco_file=f, coco_images=records)
    return DatasetLayout(root=root.resolve(), format="coco", class_names=names, sources=sources)


def coco_boxes(
    ds: DatasetLayout, src: SplitSource, img: Path, w: int, h: int, collect: list[Problem] | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Pixel xyxy boxes and class ids of one image (crowd annotations skipped); always 'labelled'."""
    assert src.coco is not None and src.coco_file is not None
    index = _coco_index(src)
    rec = src.coco_images[str(img)]
    cat_ids = sorted({int(c["id"]) for c in src.coco["categories"]})
    all_names = {int(c["id"]): str(c["name"]) for c in src.coco["categories"]}
    to_class = {cid: ds.class_names.index(all_names[cid]) for cid in cat_ids}
    rw, rh = rec.get("width"), rec.get("height")
    if rw and rh and (int(rw), int(rh)) != (w, h):
        add_problem(collect, "warning", "size_mismatch", f"JSON says {rw}x{rh}, file is {w}x{h}; using the file", img)
    boxes: list[list[float]] = []
    classes: list[int] = []
    for ann in index.get(rec.get("id"), []):
        where = f"{src.coco_file} annotation id {ann.get('id')}"
        if ann.get("iscrowd"):
            continue
        try:
            bx, by, bw, bh = (float(v) for v in ann["bbox"])
            cid = int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            add_problem(collect, "error", "malformed_annotation", f"bad bbox/category_id in {where}", src.coco_file)
            continue
        if cid not in to_class:
            add_problem(collect, "error", "class_out_of_range", f"unknown category_id {cid} in {where}", src.coco_file)
            continue
        if bw <= 0 or bh <= 0:
            add_problem(collect, "error", "degenerate_box", f"bbox size {bw} x {bh} in {where}", src.coco_file)
            continue
        tol_x, tol_y = BOX_TOLERANCE * w, BOX_TOLERANCE * h
        if bx < -tol_x or by < -tol_y or bx + bw > w + tol_x or by + bh > h + tol_y:
            add_problem(collect, "error", "box_outside_image", f"bbox {[bx, by, bw, bh]} outside {w}x{h} in {where}",
                        src.coco_file)
            continue
        boxes.append([max(0.0, bx), max(0.0, by), min(float(w), bx + bw), min(float(h), by + bh)])
        classes.append(to_class[cid])
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), True
    return np.asarray(boxes, np.float32), np.asarray(classes, np.int64), True


def _coco_index(src: SplitSource) -> dict[Any, list[dict[str, Any]]]:
    assert src.coco is not None
    cached = src.coco.get("_index_by_image")
    if cached is None:
        cached = {}
        for ann in src.coco.get("annotations", []) or []:
            if isinstance(ann, dict):
                cached.setdefault(ann.get("image_id"), []).append(ann)
        src.coco["_index_by_image"] = cached
    return cached
