"""`edge-builder harvest`: collected frames → a YOLO dataset folder with unverified pseudo-labels.

    DATASET/data.yaml            names (the checkpoint's), train: train.txt, val: val.txt
    DATASET/images/<split>/<id>.jpg
    DATASET/review/<split>/<id>.json   builder.flywheel.review.ReviewItem: pseudo-labels, status unverified
    DATASET/labels/<split>/<id>.txt    written on accept only (builder.flywheel.review)
    DATASET/{train,val}.txt            the reviewed images training sees

Pseudo-labels come from the FP32 checkpoint (builder.export.loaded_model + builder.evaluate.runners'
TorchRunner on the CPU: the same letterbox and decoder as evaluation), one box per object (class-agnostic
NMS). No training happens here. Harvesting again adds only frames not harvested yet. The split is a
hash of the frame id, so a frame keeps its split whatever the order of harvests.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.capture.meta import CaptureMeta
from agent.inference.decode.nms import class_agnostic_nms
from agent.inference.preprocess import letterbox, load_image
from builder.flywheel.inbox import collected
from builder.flywheel.review import SPLITS, Box, ReviewItem, save_item, sidecar

NMS_IOU = 0.6


class HarvestError(Exception):
    """The checkpoint, the collector folder or the dataset cannot be used; the message says why."""


@dataclass
class HarvestReport:
    added: int = 0
    skipped: int = 0  # harvested before
    boxes: int = 0
    dataset: Path | None = None


def split_of(fid: str, val_fraction: float) -> str:
    h = int(hashlib.sha256(fid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def init_dataset(out: Path, names: list[str]) -> None:
    """Create the folder and data.yaml, or check an existing one has the same classes."""
    import yaml

    y = out / "data.yaml"
    if y.exists():
        have = yaml.safe_load(y.read_text()).get("names")
        have = list(have.values()) if isinstance(have, dict) else list(have or [])
        if [str(n) for n in have] != names:
            raise HarvestError(f"{y}: classes {have} differ from the checkpoint's {names}")
        return
    out.mkdir(parents=True, exist_ok=True)
    y.write_text(yaml.safe_dump({"names": names, "train": "train.txt", "val": "val.txt"}, sort_keys=False))
    for split in SPLITS:
        (out / f"{split}.txt").touch()


class PseudoLabeler:
    """The checkpoint as a box predictor: frame (BGR) → boxes normalized to the frame."""

    def __init__(self, checkpoint: Path, conf: float = 0.25, threads: int | None = 2) -> None:
        from builder.evaluate.runners import TorchRunner
        from builder.export.loaded_model import ModelLoadError, load_model

        try:
            loaded = load_model(checkpoint)
        except ModelLoadError as exc:
            raise HarvestError(str(exc)) from exc
        self.class_names = list(loaded.class_names)
        self.runner = TorchRunner(loaded.model, loaded.imgsz, threads)
        self.decoder = self.runner.decoder(loaded.num_classes)
        self.conf = conf
        self._canvas = np.empty((loaded.imgsz, loaded.imgsz, 3), np.uint8)

    def __call__(self, image: np.ndarray) -> list[Box]:
        h, w = image.shape[:2]
        _, info = letterbox(image, self.runner.imgsz, out=self._canvas)
        det = self.decoder.decode(self.runner(self._canvas), conf=self.conf, iou=NMS_IOU, letterbox=info)
        keep = class_agnostic_nms(det.boxes, det.scores, NMS_IOU)
        scale = np.array([w, h, w, h], np.float32)
        return [Box(class_id=int(det.classes[i]), box=tuple(float(c) for c in det.boxes[i] / scale),  # type: ignore[arg-type]
                    score=round(float(det.scores[i]), 4))
                for i in keep if float(np.min(det.boxes[i][2:] - det.boxes[i][:2])) > 0]


def add_frame(out: Path, meta: CaptureMeta, image_path: Path, labeler: Callable[[np.ndarray], list[Box]],
              split: str) -> ReviewItem:
    dst = out / "images" / split / f"{meta.id}.{meta.image_format}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image_path, dst)
    boxes = labeler(load_image(str(dst)))
    capture: dict[str, Any] = {k: getattr(meta, k) for k in ("node", "camera", "reasons", "model_name",
                                                               "model_version", "frame_ts", "top_score")}
    item = ReviewItem(key=f"{split}/{meta.id}", image=str(dst.relative_to(out)), width=meta.width,
                      height=meta.height, boxes=boxes, pseudo=boxes, capture=capture)
    save_item(out, item)
    return item


def harvested_before(out: Path, fid: str) -> bool:
    return any(sidecar(out, f"{split}/{fid}").exists() for split in SPLITS)


def harvest(collected_dir: Path, out: Path, checkpoint: Path, conf: float = 0.25, val_fraction: float = 0.1,
            progress: Callable[[int, int], None] | None = None,
            labeler: PseudoLabeler | None = None) -> HarvestReport:
    """Add every collected frame not harvested yet; the checkpoint is loaded only if there is one."""
    if not Path(collected_dir).is_dir():
        raise HarvestError(f"{collected_dir}: not a collector folder")
    if not Path(checkpoint).is_file():
        raise HarvestError(f"checkpoint {checkpoint} does not exist")
    out = Path(out)
    frames = collected(Path(collected_dir))
    rep = HarvestReport(dataset=out)
    for i, (meta, img) in enumerate(frames):
        if harvested_before(out, meta.id):
            rep.skipped += 1
        else:
            if labeler is None:
                labeler = PseudoLabeler(Path(checkpoint), conf)
                init_dataset(out, labeler.class_names)
            rep.boxes += len(add_frame(out, meta, img, labeler, split_of(meta.id, val_fraction)).boxes)
            rep.added += 1
        if progress:
            progress(i + 1, len(frames))
    return rep
