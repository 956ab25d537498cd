"""Why a frame is a hard example: pure functions over one frame's detections (normalized xyxy boxes)."""

from __future__ import annotations

from collections.abc import Sequence

from agent.protocol.messages import Detection


def top_score(dets: Sequence[Detection]) -> float | None:
    return max((d.score for d in dets), default=None)


def in_band(dets: Sequence[Detection], band: tuple[float, float]) -> bool:
    """The best detection's score is inside [low, high]: the model saw something and is unsure of it."""
    top = top_score(dets)
    return top is not None and band[0] <= top <= band[1]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def close_classes(dets: Sequence[Detection], min_iou: float, margin: float) -> bool:
    """Two boxes of different classes on one object (IoU >= min_iou) with scores within `margin`: the model
    cannot tell the classes apart. Needs the engine's per-class boxes (`detect.class_agnostic_nms = false`);
    class-agnostic NMS keeps one box per object, so the pair never reaches here. A margin of 0 turns the reason
    off: INT8 scores come in steps, so two classes of one anchor often tie exactly, and "within 0" would fire."""
    if margin <= 0:
        return False
    for i, a in enumerate(dets):
        for b in dets[i + 1:]:
            if a.class_id != b.class_id and abs(a.score - b.score) <= margin and box_iou(a.box, b.box) >= min_iou:
                return True
    return False
