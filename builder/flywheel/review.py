"""The review of harvested frames, as pure functions over the dataset folder (the page and tests call these).

A harvested image `images/<split>/<id>.jpg` has a sidecar `review/<split>/<id>.json` (`ReviewItem`): the
pseudo-labels (unverified) and, once reviewed, the person's verdict. Only reviewed frames enter training:
- accept  (the boxes as they are, or as corrected: status `accepted` / `corrected`) writes the YOLO label
          file `labels/<split>/<id>.txt` and lists the image in `<split>.txt`, which data.yaml trains on;
- reject  removes the label file and the listing (the image stays, unlisted: nothing trains on it).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.atomic import atomic_write

SPLITS = ("train", "val")
KEY = re.compile(r"^(train|val)/([0-9]{19,20}-[0-9a-f]{8})$")
Status = Literal["unverified", "accepted", "corrected", "rejected"]


class ReviewError(ValueError):
    """A bad key, a missing item or bad boxes: the message says which."""


class Box(BaseModel):
    model_config = ConfigDict(extra="ignore")

    class_id: int = Field(ge=0)
    box: tuple[float, float, float, float] = Field(description="normalized [x1, y1, x2, y2]")
    score: float | None = None  # the checkpoint's score (None: drawn by a person)

    @field_validator("box")
    @classmethod
    def _box(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = (min(1.0, max(0.0, float(c))) for c in v)
        if x2 - x1 <= 1e-4 or y2 - y1 <= 1e-4:
            raise ValueError(f"empty box {list(v)}")
        return (x1, y1, x2, y2)


class ReviewItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str
    image: str  # relative to the dataset root
    width: int
    height: int
    status: Status = "unverified"
    boxes: list[Box] = Field(default_factory=list)  # what the label file says (or will say)
    pseudo: list[Box] = Field(default_factory=list)  # the checkpoint's boxes, kept for comparison
    capture: dict[str, object] = Field(default_factory=dict)  # node, camera, reasons, model of the capture
    reviewed_at: datetime | None = None


def sidecar(root: Path, key: str) -> Path:
    m = KEY.match(key)
    if m is None:
        raise ReviewError(f"not a review key: {key[:60]!r}")
    return Path(root) / "review" / m.group(1) / f"{m.group(2)}.json"


def load_item(root: Path, key: str) -> ReviewItem:
    path = sidecar(root, key)
    if not path.is_file():
        raise ReviewError(f"no such item: {key}")
    return ReviewItem.model_validate_json(path.read_bytes())


def save_item(root: Path, item: ReviewItem) -> None:
    path = sidecar(root, item.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, item.model_dump_json(indent=1).encode())


def list_items(root: Path) -> list[dict[str, str]]:
    """Every item, oldest first: key and status (what the page pages through)."""
    out = []
    for split in SPLITS:
        for p in sorted((Path(root) / "review" / split).glob("*.json")):
            status = json.loads(p.read_text()).get("status", "unverified")
            out.append({"key": f"{split}/{p.stem}", "status": status})
    return sorted(out, key=lambda x: x["key"].split("/")[1])


def class_names(root: Path) -> list[str]:
    import yaml

    return [str(n) for n in yaml.safe_load((Path(root) / "data.yaml").read_text())["names"]]


def yolo_lines(boxes: list[Box]) -> str:
    lines = [f"{b.class_id} {(b.box[0] + b.box[2]) / 2:.6f} {(b.box[1] + b.box[3]) / 2:.6f} "
             f"{b.box[2] - b.box[0]:.6f} {b.box[3] - b.box[1]:.6f}" for b in boxes]
    return "".join(f"{ln}\n" for ln in lines)


def _listing(root: Path, item: ReviewItem, present: bool) -> None:
    """Add or remove the image in `<split>.txt` (the list data.yaml trains on)."""
    lst = Path(root) / f"{item.key.split('/')[0]}.txt"
    lines = [ln for ln in (lst.read_text().splitlines() if lst.exists() else []) if ln and ln != item.image]
    if present:
        lines.append(item.image)
    atomic_write(lst, "".join(f"{ln}\n" for ln in sorted(lines)).encode())


def label_path(root: Path, item: ReviewItem) -> Path:
    split, fid = item.key.split("/")
    return Path(root) / "labels" / split / f"{fid}.txt"


def accept(root: Path, key: str, boxes: list[Box] | None = None) -> ReviewItem:
    """Accept the pseudo-labels (boxes None) or the given boxes: write the label file, list the image."""
    item = load_item(root, key)
    names = class_names(root)
    new = item.boxes if boxes is None else [Box.model_validate(b) for b in boxes]
    bad = [b.class_id for b in new if b.class_id >= len(names)]
    if bad:
        raise ReviewError(f"class id {bad[0]} not in 0..{len(names) - 1}")
    changed = [(b.class_id, b.box) for b in new] != [(b.class_id, b.box) for b in item.pseudo]
    item = item.model_copy(update={"boxes": new, "status": "corrected" if changed else "accepted",
                                   "reviewed_at": datetime.now(UTC)})
    lp = label_path(root, item)
    lp.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(lp, yolo_lines(new).encode())
    _listing(root, item, True)
    save_item(root, item)
    return item


def correct(root: Path, key: str, boxes: list[Box]) -> ReviewItem:
    """Accept with the person's boxes (moved, drawn, re-classed, deleted)."""
    return accept(root, key, boxes)


def reject(root: Path, key: str) -> ReviewItem:
    """Not a training image: no label file, not listed."""
    item = load_item(root, key).model_copy(update={"status": "rejected", "reviewed_at": datetime.now(UTC)})
    label_path(root, item).unlink(missing_ok=True)
    _listing(root, item, False)
    save_item(root, item)
    return item


def apply(root: Path, key: str, action: str, boxes: list[dict[str, object]] | None = None) -> ReviewItem:
    """One verdict from the page: {"action": "accept" | "correct" | "reject", "boxes": [...]}."""
    if action == "reject":
        return reject(root, key)
    if action not in ("accept", "correct"):
        raise ReviewError(f"unknown action {action!r} (accept, correct or reject)")
    try:
        parsed = None if boxes is None else [Box.model_validate(b) for b in boxes]
    except ValueError as exc:
        raise ReviewError(f"bad boxes: {exc}") from None
    return accept(root, key, parsed)
