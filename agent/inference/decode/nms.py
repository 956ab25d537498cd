"""Non-maximum suppression in pure numpy (same semantics as torchvision.ops.nms / batched_nms).

`batched_nms` is class-aware (what COCO mAP evaluation expects); `class_agnostic_nms` lets boxes of
different classes suppress each other, so one object is reported once even when a weak model splits
its confidence between two classes (the agent's `[detect] class_agnostic_nms`).
"""

from __future__ import annotations

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against (N, 4) boxes (areas without the +1 pixel convention)."""
    xx1 = np.maximum(box[0], boxes[:, 0])
    yy1 = np.maximum(box[1], boxes[:, 1])
    xx2 = np.minimum(box[2], boxes[:, 2])
    yy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept, by decreasing score; a box is dropped when IoU > threshold with a kept one."""
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    boxes = boxes.astype(np.float32, copy=False)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Uses torchvision's trick of offsetting each class into its own coordinate range, so one pass
    does every class; result sorted by decreasing score.
    """
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    boxes = boxes.astype(np.float32, copy=False)
    offset = classes.astype(np.float32)[:, None] * (float(boxes.max()) + 1.0)
    return nms(boxes + offset, scores, iou_threshold)


def class_agnostic_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept, by decreasing score, whatever each box's class: of boxes overlapping at
    IoU > threshold only the highest-scoring one survives (ties: the earlier index)."""
    return nms(boxes, scores, iou_threshold)
