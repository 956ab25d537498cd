"""Detection datasets: YOLO format and COCO JSON, loaded into one in-memory view, and validated.

YOLO layouts understood:
- `images/{train,val}` + `labels/{train,val}` + a data yaml (`data.yaml`, `dataset.yaml`, or the only
  `*.yaml` in the root) with `names` (list or {id: name}) and `train`/`val` entries (dirs, lists of dirs
  or .txt image lists), optionally `path`;
- the `train/images`, `valid/images` (Roboflow-style) variant, whose yaml often says `../train/images`;
- no yaml at all but `classes.txt` / `obj.names` and one of the layouts above.
A label file is the image path with its last `images` segment replaced by `labels` and a `.txt` suffix.

COCO: `annotations/instances_{train,val}*.json` (+ `images/{split}` or `{split}2017/`), per-split
`{train,valid}/_annotations.coco.json` with the images beside it, or a single JSON file. Category ids
are mapped to contiguous class ids in ascending category-id order.

Validation (`validate_dataset`) reports problems with file and line; `ValidationReport.usable` is False
when any error-severity problem exists, and the trainer then refuses to start.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, Field

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
class _Source:
    """Where one split's annotations come from: YOLO label files or a parsed COCO JSON."""

    images: list[Path]
    coco: dict[str, Any] | None = None
    coco_file: Path | None = None
    coco_images: dict[str, dict[str, Any]] = field(default_factory=dict)  # image path -> coco image record


@dataclass
class Dataset:
    root: Path
    format: Literal["yolo", "coco"]
    class_names: list[str]
    yaml_file: Path | None = None
    _sources: dict[str, _Source] = field(default_factory=dict, repr=False)
    _cache: dict[str, list[Item]] = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> list[str]:
        return list(self._sources)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def images(self, split: str) -> list[Path]:
        return list(self._source(split).images)

    def items(self, split: str) -> list[Item]:
        """Every image of the split with its boxes (images that cannot be read are skipped)."""
        split = SPLIT_ALIASES.get(split, split)
        if split not in self._cache:
            items, _ = _read_split(self, split, collect=None)
            self._cache[split] = items
        return self._cache[split]

    def _source(self, split: str) -> _Source:
        split = SPLIT_ALIASES.get(split, split)
        if split not in self._sources:
            raise DatasetError(f"dataset {self.root} has no {split!r} split (has: {', '.join(self.splits) or 'none'})")
        return self._sources[split]

    def fingerprint(self) -> str:
        """sha256 over class names and every file's relative path, size and mtime-free content hash of labels.

        Cheap enough for big datasets: images contribute path and size, label/annotation files their bytes.
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.class_names).encode())
        for split in sorted(self._sources):
            src = self._sources[split]
            h.update(split.encode())
            for img in sorted(src.images):
                h.update(_rel(img, self.root).encode())
                h.update(str(_size(img)).encode())
                if src.coco is None:
                    lbl = label_path_for(img)
                    if lbl.is_file():
                        h.update(lbl.read_bytes())
            if src.coco_file is not None:
                h.update(src.coco_file.read_bytes())
        return h.hexdigest()


# ------------------------------------------------------------------------------------------ validation


class Problem(BaseModel):
    severity: Literal["error", "warning"]
    code: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}"
        return f"{self.severity.upper():7s} {self.code:22s} {where + ': ' if where else ''}{self.message}"


class SplitStats(BaseModel):
    images: int = 0
    readable_images: int = 0
    labelled_images: int = 0
    boxes: int = 0
    per_class: dict[str, int] = Field(default_factory=dict)


class ValidationReport(BaseModel):
    path: str
    format: str | None = None
    class_names: list[str] = Field(default_factory=list)
    splits: dict[str, SplitStats] = Field(default_factory=dict)
    problems: list[Problem] = Field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def usable(self) -> bool:
        return not self.errors

    def format_text(self, max_problems: int = 50) -> str:
        lines = [f"dataset {self.path} ({self.format or 'unknown format'}), classes: {self.class_names}"]
        for split, s in self.splits.items():
            per = ", ".join(f"{k} {v}" for k, v in s.per_class.items())
            lines.append(
                f"  {split:5s}: {s.images} images ({s.readable_images} readable, {s.labelled_images} with labels), "
                f"{s.boxes} boxes [{per}]"
            )
        shown = sorted(self.problems, key=lambda p: p.severity != "error")[:max_problems]
        for p in shown:
            lines.append(f"  {p}")
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more problems")
        verdict = "usable" if self.usable else "NOT usable"
        lines.append(f"{len(self.errors)} errors, {len(self.warnings)} warnings: {verdict}")
        return "\n".join(lines)


def validate_dataset(path: Path | str, check_images: bool = True) -> ValidationReport:
    """Check a dataset for everything that would silently ruin training; never raises for bad data."""
    report = ValidationReport(path=str(path))
    try:
        ds = load_dataset(path)
    except DatasetError as exc:
        report.problems.append(Problem(severity="error", code="unreadable_dataset", message=str(exc)))
        return report
    report.format = ds.format
    report.class_names = ds.class_names
    for required in ("train", "val"):
        if required not in ds.splits:
            report.problems.append(
                Problem(severity="error", code="missing_split", message=f"no {required!r} split found", file=str(ds.root))
            )
    seen: dict[str, tuple[str, Path]] = {}
    for split in ds.splits:
        stats = SplitStats()
        _read_split(ds, split, collect=report.problems, stats=stats, check_images=check_images, seen=seen)
        report.splits[split] = stats
        if stats.images == 0:
            report.problems.append(
                Problem(severity="error", code="empty_split", message=f"{split!r} split has no images", file=str(ds.root))
            )
        elif stats.boxes == 0 and split in ("train", "val"):
            report.problems.append(
                Problem(severity="error", code="no_boxes", message=f"{split!r} split has no labelled boxes at all",
                        file=str(ds.root))
            )
    return report


# -------------------------------------------------------------------------------------------- loading


def load_dataset(path: Path | str) -> Dataset:
    """Load a YOLO-format or COCO-JSON dataset (see the module docstring for the layouts understood)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p} does not exist")
    if p.is_file() and p.suffix.lower() == ".json":
        # A lone JSON without a split in its name serves as the evaluation split.
        return _load_coco_files(p.parent, {_split_from_name(p.name) or "val": p})
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        return _load_yolo(p.parent, p)
    if not p.is_dir():
        raise DatasetError(f"{p} is neither a dataset directory, a data yaml nor a COCO JSON file")
    yaml_file = _find_yaml(p)
    if yaml_file is not None:
        return _load_yolo(p, yaml_file)
    coco = _find_coco_jsons(p)
    if coco:
        return _load_coco_files(p, coco)
    if _discover_yolo_splits(p):
        return _load_yolo(p, None)
    raise DatasetError(
        f"{p}: no data yaml, no COCO annotations and no images/{{train,val}} or {{train,valid}}/images folders"
    )


def _find_yaml(root: Path) -> Path | None:
    for name in ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml"):
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DatasetError(f"{root}: several yaml files ({', '.join(f.name for f in found)}); pass the data yaml itself")
    return None


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot parse yaml: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with names/train/val, got {type(data).__name__}")
    return data


def _names_from(value: Any, where: Path) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        names = [str(v) for v in value]
    elif isinstance(value, dict):
        try:
            ids = sorted(int(k) for k in value)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: names keys must be integers") from exc
        if ids != list(range(len(ids))):
            raise DatasetError(f"{where}: names ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        names = [str(value[k] if k in value else value[str(k)]) for k in ids]
    else:
        raise DatasetError(f"{where}: 'names' must be a list or an {{id: name}} mapping")
    if not names:
        raise DatasetError(f"{where}: 'names' is empty")
    return names


def _load_yolo(root: Path, yaml_file: Path | None) -> Dataset:
    cfg: dict[str, Any] = _load_yaml(yaml_file) if yaml_file else {}
    where = yaml_file or root
    if "names" in cfg:
        names = _names_from(cfg["names"], where)
    else:
        names_file = next((root / n for n in ("classes.txt", "obj.names") if (root / n).is_file()), None)
        if names_file is None:
            raise DatasetError(f"{where}: no class names ('names' in the data yaml, or classes.txt)")
        names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
    if "nc" in cfg and int(cfg["nc"]) != len(names):
        raise DatasetError(f"{where}: nc is {cfg['nc']} but {len(names)} names are given")
    base = root
    if cfg.get("path"):
        bp = Path(str(cfg["path"])).expanduser()
        base = bp if bp.is_absolute() else (root / bp)
        if not base.exists():
            base = root  # a stale `path:` from another machine: fall back to the yaml's folder
    sources: dict[str, _Source] = {}
    for key in ("train", "val", "valid", "test"):
        if not cfg.get(key):
            continue
        split = SPLIT_ALIASES[key]
        values = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        images: list[Path] = []
        for v in values:
            images.extend(_images_from_entry(str(v), base, root, where))
        sources[split] = _Source(images=sorted(set(images)))
    if not sources:
        for split, images in _discover_yolo_splits(root).items():
            sources[split] = _Source(images=images)
    return Dataset(root=root.resolve(), format="yolo", class_names=names, yaml_file=yaml_file, _sources=sources)


def _images_from_entry(value: str, base: Path, root: Path, where: Path) -> list[Path]:
    """Resolve one train/val entry: a folder or an image-list .txt, tolerating Roboflow's `../train/images`."""
    rel = Path(value).expanduser()
    candidates = [rel] if rel.is_absolute() else [base / rel, root / rel]
    if not rel.is_absolute():
        stripped = Path(*[part for part in rel.parts if part not in ("..", ".")]) if rel.parts else rel
        candidates += [root / stripped, base / stripped]
    for c in candidates:
        if c.is_dir():
            return _list_images(c)
        if c.is_file() and c.suffix == ".txt":
            out = []
            for ln in c.read_text().splitlines():
                ln = ln.strip()
                if ln:
                    ip = Path(ln)
                    out.append(ip if ip.is_absolute() else (c.parent / ip))
            return out
    raise DatasetError(f"{where}: split entry {value!r} not found (tried {', '.join(str(c) for c in candidates)})")


def _discover_yolo_splits(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for name, split in SPLIT_ALIASES.items():
        for d in (root / "images" / name, root / name / "images"):
            if d.is_dir() and split not in found:
                found[split] = _list_images(d)
    return found


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def label_path_for(image: Path) -> Path:
    """YOLO convention: replace the last `images` path segment with `labels`, suffix `.txt`."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")  # labels beside the images (darknet style)


def _split_from_name(name: str) -> str | None:
    low = name.lower()
    for key in ("train", "valid", "val", "test"):
        if key in low:
            return SPLIT_ALIASES[key]
    return None


def _find_coco_jsons(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for j in sorted(root.glob("annotations/*.json")) + sorted(root.glob("*/_annotations.coco.json")):
        split = _split_from_name(j.name) or _split_from_name(j.parent.name)
        if split and split not in found:
            found[split] = j
    if not found:
        jsons = sorted(root.glob("*.json"))
        for j in jsons:
            split = _split_from_name(j.name)
            if split and split not in found:
                found[split] = j
        if not found and len(jsons) == 1:
            found["val"] = jsons[0]
    return found


def _load_coco_files(root: Path, files: dict[str, Path]) -> Dataset:
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
    sources: dict[str, _Source] = {}
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
        sources[split] = _Source(images=images, coco=data, coco_file=f, coco_images=records)
    return Dataset(root=root.resolve(), format="coco", class_names=names, _sources=sources)


# ------------------------------------------------------------------------------------ reading a split


def _add(collect: list[Problem] | None, severity: str, code: str, message: str, file: Path | str | None = None,
         line: int | None = None) -> None:
    if collect is not None:
        collect.append(Problem(severity=severity, code=code, message=message,  # type: ignore[arg-type]
                               file=str(file) if file is not None else None, line=line))


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.resolve().relative_to(root))
    except ValueError:
        return str(p)


def _image_size(path: Path, decode: bool) -> tuple[int, int] | None:
    """(width, height), or None when unreadable. decode=False reads only the header (PIL) when available."""
    if _size(path) <= 0:
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


def _read_split(
    ds: Dataset,
    split: str,
    collect: list[Problem] | None,
    stats: SplitStats | None = None,
    check_images: bool = False,
    seen: dict[str, tuple[str, Path]] | None = None,
) -> tuple[list[Item], SplitStats]:
    src = ds._source(split)
    stats = stats if stats is not None else SplitStats()
    per_class: Counter[int] = Counter()
    items: list[Item] = []
    stats.images = len(src.images)
    label_owner: dict[Path, Path] = {}
    for img in src.images:
        size = _image_size(img, decode=check_images) if img.is_file() else None
        if not img.is_file():
            _add(collect, "error", "missing_image", "image file listed but not found", img)
        elif size is None:
            _add(collect, "error", "unreadable_image", "empty or undecodable image", img)
        if seen is not None and img.is_file():
            digest = hashlib.sha1(img.read_bytes()).hexdigest()
            if digest in seen:
                other_split, other = seen[digest]
                sev = "error" if other_split != split else "warning"
                why = "train/val leakage" if sev == "error" else "same content twice"
                _add(collect, sev, "duplicate_image", f"identical to {other} ({other_split}): {why}", img)
            else:
                seen[digest] = (split, img)
        if size is None:
            continue
        stats.readable_images += 1
        w, h = size
        if src.coco is not None:
            boxes, classes, has_labels = _coco_boxes(ds, src, img, w, h, collect)
        else:
            lbl = label_path_for(img)
            if lbl in label_owner:
                _add(collect, "error", "shared_label", f"label file also claimed by {label_owner[lbl].name}", img)
            label_owner[lbl] = img
            boxes, classes, has_labels = _yolo_boxes(lbl, w, h, ds.num_classes, collect)
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
                _add(collect, "warning", "orphan_label", "label file without a matching image", lbl)


def _yolo_boxes(
    lbl: Path, w: int, h: int, nc: int, collect: list[Problem] | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    if not lbl.is_file():
        _add(collect, "warning", "missing_label", "no label file: image treated as background", lbl)
        return *empty, False
    try:
        text = lbl.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _add(collect, "error", "unreadable_label", str(exc), lbl)
        return *empty, False
    boxes: list[list[float]] = []
    classes: list[int] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 5:
            kind = "segment polygon (not supported for detection)" if len(parts) > 5 and len(parts) % 2 == 1 else ""
            _add(collect, "error", "malformed_line", f"expected 'class cx cy w h', got {len(parts)} fields {kind}".strip(),
                 lbl, n)
            continue
        try:
            cls_f = float(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:])
        except ValueError:
            _add(collect, "error", "malformed_line", f"non-numeric value in {line!r}", lbl, n)
            continue
        if not np.all(np.isfinite([cls_f, cx, cy, bw, bh])):
            _add(collect, "error", "malformed_line", f"non-finite value in {line!r}", lbl, n)
            continue
        if cls_f != int(cls_f) or not 0 <= int(cls_f) < nc:
            _add(collect, "error", "class_out_of_range", f"class id {parts[0]} not in 0..{nc - 1}", lbl, n)
            continue
        if bw <= 0 or bh <= 0:
            _add(collect, "error", "degenerate_box", f"box width/height must be > 0, got {bw} x {bh}", lbl, n)
            continue
        x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        if min(x0, y0) < -BOX_TOLERANCE or max(x1, y1) > 1 + BOX_TOLERANCE:
            _add(collect, "error", "box_outside_image",
                 f"box ({x0:.3f}, {y0:.3f}, {x1:.3f}, {y1:.3f}) leaves the image (normalized coordinates)", lbl, n)
            continue
        boxes.append([max(0.0, x0) * w, max(0.0, y0) * h, min(1.0, x1) * w, min(1.0, y1) * h])
        classes.append(int(cls_f))
    if not boxes:
        return *empty, True
    return np.asarray(boxes, np.float32), np.asarray(classes, np.int64), True


def _coco_boxes(
    ds: Dataset, src: _Source, img: Path, w: int, h: int, collect: list[Problem] | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    assert src.coco is not None and src.coco_file is not None
    index = _coco_index(src)
    rec = src.coco_images[str(img)]
    cat_ids = sorted({int(c["id"]) for c in src.coco["categories"]})
    all_names = {int(c["id"]): str(c["name"]) for c in src.coco["categories"]}
    to_class = {cid: ds.class_names.index(all_names[cid]) for cid in cat_ids}
    rw, rh = rec.get("width"), rec.get("height")
    if rw and rh and (int(rw), int(rh)) != (w, h):
        _add(collect, "warning", "size_mismatch", f"JSON says {rw}x{rh}, file is {w}x{h}; using the file", img)
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
            _add(collect, "error", "malformed_annotation", f"bad bbox/category_id in {where}", src.coco_file)
            continue
        if cid not in to_class:
            _add(collect, "error", "class_out_of_range", f"unknown category_id {cid} in {where}", src.coco_file)
            continue
        if bw <= 0 or bh <= 0:
            _add(collect, "error", "degenerate_box", f"bbox size {bw} x {bh} in {where}", src.coco_file)
            continue
        tol_x, tol_y = BOX_TOLERANCE * w, BOX_TOLERANCE * h
        if bx < -tol_x or by < -tol_y or bx + bw > w + tol_x or by + bh > h + tol_y:
            _add(collect, "error", "box_outside_image", f"bbox {[bx, by, bw, bh]} outside {w}x{h} in {where}",
                 src.coco_file)
            continue
        boxes.append([max(0.0, bx), max(0.0, by), min(float(w), bx + bw), min(float(h), by + bh)])
        classes.append(to_class[cid])
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), True
    return np.asarray(boxes, np.float32), np.asarray(classes, np.int64), True


def _coco_index(src: _Source) -> dict[Any, list[dict[str, Any]]]:
    assert src.coco is not None
    cached = src.coco.get("_index_by_image")
    if cached is None:
        cached = {}
        for ann in src.coco.get("annotations", []) or []:
            if isinstance(ann, dict):
                cached.setdefault(ann.get("image_id"), []).append(ann)
        src.coco["_index_by_image"] = cached
    return cached


# ------------------------------------------------------------------------------- training view (YOLO)


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
            rows = []
            for (x0, y0, x1, y1), c in zip(item.boxes.tolist(), item.classes.tolist(), strict=True):
                rows.append(
                    f"{c} {(x0 + x1) / 2 / item.width:.6f} {(y0 + y1) / 2 / item.height:.6f} "
                    f"{(x1 - x0) / item.width:.6f} {(y1 - y0) / item.height:.6f}"
                )
            (lbl_dir / f"{stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
        written[split] = str(img_dir.resolve())
    cfg = {"path": str(out.resolve()), **written, "nc": ds.num_classes, "names": dict(enumerate(ds.class_names))}
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return yaml_path
