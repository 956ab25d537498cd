"""One model's accuracy against a reference model's on the same images: the row every accuracy benchmark prints.

Both evaluations (builder.evaluate.evaluator.evaluate_runner) must cover the same images in the same order: the
95% interval comes from builder.evaluate.metrics.paired_bootstrap, which resamples images for both at once.
Differences are `model - reference` in mAP points (100 x): negative means the model lost accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from builder.evaluate.evaluator import EvalResult
from builder.evaluate.metrics import ImageBoxes, paired_bootstrap

BOOTSTRAP_RESAMPLES = 500  # paired_bootstrap's default, as convert's own measurement uses


def drop_row(gts: Sequence[ImageBoxes], reference: EvalResult, model: EvalResult, num_classes: int,
             resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """mAP50-95 and mAP50 of `model`, their change from `reference` in points, the paired 95% interval of the
    mAP50-95 change in points."""
    if len(model.detections) != len(gts) or len(reference.detections) != len(gts):
        raise ValueError("paired comparison needs both models' detections on the same images")
    lo, hi = paired_bootstrap(gts, reference.detections, model.detections, num_classes, n=resamples)
    return {
        "map50_95": model.result.map50_95, "map50": model.result.map50,
        "drop_map50_95_pts": (model.result.map50_95 - reference.result.map50_95) * 100,
        "drop_map50_pts": (model.result.map50 - reference.result.map50) * 100,
        "drop_map50_95_ci95_pts": [lo * 100, hi * 100],
    }
