"""YOLO-format datasets: finding the data yaml and the splits, and parsing label files.

Layouts understood: `images/{train,val}` + `labels/{train,val}`, the Roboflow-style `train/images`,
`valid/images` variant (whose yaml often says `../train/images`), with a data yaml (`names` as a list or
{id: name}; `train`/`val` as dirs, lists of dirs or .txt image lists; optional `path`) or with only
`classes.txt` / `obj.names`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from builder.data.layout import (
    BOX_TOLERANCE,
    IMAGE_SUFFIXES,
    SPLIT_ALIASES,
    DatasetError,
    DatasetLayout,
    SplitSource,
)
from builder.data.report import Problem, add_problem


def find_yaml(root: Path) -> Path | None:
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


def _class_names(cfg: dict[str, Any], root: Path, where: Path) -> list[str]:
    if "names" in cfg:
        names = _names_from(cfg["names"], where)
    else:
        names_file = next((root / n for n in ("classes.txt", "obj.names") if (root / n).is_file()), None)
        if names_file is None:
            raise DatasetError(f"{where}: no class names ('names' in the data yaml, or classes.txt)")
        names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
    if "nc" in cfg and int(cfg["nc"]) != len(names):
        raise DatasetError(f"{where}: nc is {cfg['nc']} but {len(names)} names are given")
    return names


def load_yolo(root: Path, yaml_file: Path | None) -> DatasetLayout:
    cfg: dict[str, Any] = _load_yaml(yaml_file) if yaml_file else {}
    where = yaml_file or root
    names = _class_names(cfg, root, where)
    base = root
    if cfg.get("path"):
        bp = Path(str(cfg["path"])).expanduser()
        base = bp if bp.is_absolute() else (root / bp)
        if not base.exists():
            base = root  # a stale `path:` from another machine: fall back to the yaml's folder
    sources: dict[str, SplitSource] = {}
    for key in ("train", "val", "valid", "test"):
        if not cfg.get(key):
            continue
        split = SPLIT_ALIASES[key]
        values = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        images: list[Path] = []
        for v in values:
            images.extend(_images_from_entry(str(v), base, root, where))
        sources[split] = SplitSource(images=sorted(set(images)))
    if not sources:
        for split, images in discover_yolo_splits(root).items():
            sources[split] = SplitSource(images=images)
    return DatasetLayout(root=root.resolve(), format="yolo", class_names=names, yaml_file=yaml_file, sources=sources)


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


def discover_yolo_splits(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for name, split in SPLIT_ALIASES.items():
        for d in (root / "images" / name, root / name / "images"):
            if d.is_dir() and split not in found:
                found[split] = _list_images(d)
    return found


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _parse_line(line: str, nc: int, lbl: Path, n: int, collect: list[Problem] | None) -> tuple[int, list[float]] | None:
    """(class, normalized xyxy) of one `class cx cy w h` line, or None after reporting why not."""
    parts = line.split()
    if len(parts) != 5:
        kind = "segment polygon (not supported for detection)" if len(parts) > 5 and len(parts) % 2 == 1 else ""
        add_problem(collect, "error", "malformed_line", f"expected 'class cx cy w h', got {len(parts)} fields {kind}".strip(),
                    lbl, n)
        return None
    try:
        cls_f = float(parts[0])
        cx, cy, bw, bh = (float(v) for v in parts[1:])
    except ValueError:
        add_problem(collect, "error", "malformed_line", f"non-numeric value in {line!r}", lbl, n)
        return None
    if not np.all(np.isfinite([cls_f, cx, cy, bw, bh])):
        add_problem(collect, "error", "malformed_line", f"non-finite value in {line!r}", lbl, n)
        return None
    if cls_f != int(cls_f) or not 0 <= int(cls_f) < nc:
        add_problem(collect, "error", "class_out_of_range", f"class id {parts[0]} not in 0..{nc - 1}", lbl, n)
        return None
    if bw <= 0 or bh <= 0:
        add_problem(collect, "error", "degenerate_box", f"box width/height must be > 0, got {bw} x {bh}", lbl, n)
        return None
    x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
    if min(x0, y0) < -BOX_TOLERANCE or max(x1, y1) > 1 + BOX_TOLERANCE:
        add_problem(collect, "error", "box_outside_image",
                    f"box ({x0:.3f}, {y0:.3f}, {x1:.3f}, {y1:.3f}) leaves the image (normalized coordinates)", lbl, n)
        return None
    return int(cls_f), [x0, y0, x1, y1]


def yolo_boxes(
    lbl: Path, w: int, h: int, nc: int, collect: list[Problem] | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Pixel xyxy boxes, classes, and whether a label file exists, for one image of size w x h."""
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    if not lbl.is_file():
        add_problem(collect, "warning", "missing_label", "no label file: image treated as background", lbl)
        return *empty, False
    try:
        text = lbl.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        add_problem(collect, "error", "unreadable_label", str(exc), lbl)
        return *empty, False
    boxes: list[list[float]] = []
    classes: list[int] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        parsed = _parse_line(line, nc, lbl, n, collect) if line else None
        if parsed is None:
            continue
        cls, (x0, y0, x1, y1) = parsed
        boxes.append([max(0.0, x0) * w, max(0.0, y0) * h, min(1.0, x1) * w, min(1.0, y1) * h])
        classes.append(cls)
    if not boxes:
        return *empty, True
    return np.asarray(boxes, np.float32), np.asarray(classes, np.int64), True
