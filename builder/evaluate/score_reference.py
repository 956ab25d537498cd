"""The score reference a bundle ships for the nodes' drift check (agent.capture.reference).

Measured on the dataset's validation split with the bundle's own CPU model file (the INT8 .tflite a node
runs, through builder.evaluate's runner: the same letterbox and decoder), after the node's default
post-processing (class-agnostic NMS at IoU 0.5), keeping detections at or above `min_score`. Written as
`score_reference.json` in the bundle: `edge-builder convert` ships it (manifest v2 field `score_reference`,
listed in every backend's `needs`; docs/PROTOCOL.md, "Hard-example capture").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agent.atomic import atomic_write
from agent.capture.reference import REFERENCE_FILE, ScoreReference
from agent.inference.decode.nms import class_agnostic_nms
from builder.evaluate.metrics import ImageBoxes

NODE_NMS_IOU = 0.5  # agent.inference.config.DetectConfig.iou_threshold's default


def reference_from_detections(detections: Sequence[ImageBoxes], min_score: float = 0.2, bins: int = 20,
                              source: str = "") -> ScoreReference:
    """The histogram of the scores a node would see on these images: class-agnostic NMS first (the node's
    default post-processing), then detections at or above `min_score`."""
    scores: list[float] = []
    for det in detections:
        s = np.asarray(det.scores if det.scores is not None else [], np.float32)
        if len(s):
            scores.extend(float(s[i]) for i in class_agnostic_nms(det.boxes, s, NODE_NMS_IOU) if s[i] >= min_score)
    return ScoreReference.from_scores(np.asarray(scores), min_score, images=len(detections), bins=bins,
                                      source=source)


def score_reference(model: Path, dataset: Path, min_score: float = 0.2, bins: int = 20,
                    split: str = "val") -> ScoreReference:
    """Measure a model file on a dataset split (convert does the same from the evaluation it already ran)."""
    from builder.evaluate.evaluator import evaluate_path

    res, _ = evaluate_path(model, dataset, split=split, show_progress=False)
    return reference_from_detections(res.detections, min_score, bins,
                                     source=f"{Path(model).name} on {Path(dataset).name}/{split}")


def write_reference(bundle_dir: Path, ref: ScoreReference) -> Path:
    path = Path(bundle_dir) / REFERENCE_FILE
    atomic_write(path, ref.model_dump_json(indent=1).encode())
    return path
