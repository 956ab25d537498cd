"""Per-object scoring of a detector on a video with ground truth: what a person watching it would count.

mAP ranks detections by score; someone watching a demo asks something simpler of every object in every
frame: does it carry exactly one box, of its own class? `ObjectTally.add` answers that per frame (boxes
matched at IoU >= 0.5, class-blind, so a box of the wrong class over an object counts as a wrong class, not
as a miss), and counts the boxes that cover no object (strays). Pure numpy; boxes are normalized xyxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from builder.evaluate.metrics import iou_matrix

MATCH_IOU = 0.5


@dataclass
class ObjectTally:
    frames: int = 0
    objects: int = 0
    right: int = 0  # exactly one box over the object, of its class
    wrong_class: int = 0  # exactly one box over it, of another class
    duplicated: int = 0  # two or more boxes over it (e.g. "circle" and "square" on one object)
    missed: int = 0  # no box over it
    strays: int = 0  # boxes over no object

    def add(self, gt_boxes: Sequence[Sequence[float]], gt_classes: Sequence[int],
            det_boxes: Sequence[Sequence[float]], det_classes: Sequence[int]) -> None:
        """One frame: ground truth and detections as normalized xyxy boxes with class ids."""
        gt = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        det = np.asarray(det_boxes, np.float32).reshape(-1, 4)
        gcls, dcls = np.asarray(gt_classes, np.int64), np.asarray(det_classes, np.int64)
        self.frames += 1
        self.objects += len(gt)
        over = iou_matrix(gt, det) >= MATCH_IOU  # (objects, boxes); empty sides give an empty matrix
        for g in range(len(gt)):
            hits = np.flatnonzero(over[g])
            if len(hits) == 0:
                self.missed += 1
            elif len(hits) > 1:
                self.duplicated += 1
            elif dcls[hits[0]] == gcls[g]:
                self.right += 1
            else:
                self.wrong_class += 1
        self.strays += int((~over.any(axis=0)).sum())

    @property
    def right_share(self) -> float:
        return self.right / self.objects if self.objects else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "right_share": self.right_share}

    def line(self) -> str:
        return (f"{self.right}/{self.objects} objects ({self.right_share:.1%}) carry one box of their class over "
                f"{self.frames} frames; {self.wrong_class} wrong class, {self.duplicated} with two or more boxes, "
                f"{self.missed} missed; {self.strays} boxes over nothing")
