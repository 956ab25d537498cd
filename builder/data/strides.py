"""Which head level (stride 8/16/32) an object of a given size belongs to, at the model's input size.

YOLO-NAS has no fixed size-to-level rule: its loss (PP-YOLOE's TaskAlignedAssigner, topk 13, as in
libreyolo 1.6.0) takes as positives the anchor points whose centres lie inside a box, chosen across all
levels by predicted score x IoU^6. The level that ends up firing for a size is learned (our 128 px test
bundle fires at stride 8 for every object up to 64 px). For counting we use a geometric proxy of that
assigner: an object of size L = sqrt(w * h) (pixels at the model input) belongs to the coarsest stride s
with L >= 2 s, i.e. the coarsest level that puts about 2 x 2 of its anchor centres inside the box, and
to the finest level when smaller than that:

    stride 8: L < 32 px      stride 16: 32 <= L < 64 px      stride 32: L >= 64 px

(docs/CONVERSION.md, "Calibration coverage"; the benchmark dataset v2 spreads its objects over these bands).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

STRIDES: tuple[int, ...] = (8, 16, 32)
ANCHORS_ACROSS = 2  # L >= ANCHORS_ACROSS * stride: about 2 x 2 anchor centres of that level inside the box


def box_size(w: float, h: float) -> float:
    """The size L of a w x h box: the side of the square of the same area."""
    return math.sqrt(max(0.0, w) * max(0.0, h))


def stride_for_size(size: float, strides: Sequence[int] = STRIDES) -> int:
    """The level an object of size `size` (pixels at the model input) is counted at (module docstring)."""
    ordered = sorted(int(s) for s in strides)
    for s in reversed(ordered):
        if size >= ANCHORS_ACROSS * s:
            return s
    return ordered[0]


def stride_band(stride: int, strides: Sequence[int] = STRIDES) -> tuple[float, float]:
    """[lo, hi) of the sizes counted at `stride` (hi is inf for the coarsest level)."""
    ordered = sorted(int(s) for s in strides)
    i = ordered.index(int(stride))
    lo = 0.0 if i == 0 else float(ANCHORS_ACROSS * ordered[i])
    hi = math.inf if i == len(ordered) - 1 else float(ANCHORS_ACROSS * ordered[i + 1])
    return lo, hi


def describe_band(stride: int, strides: Sequence[int] = STRIDES) -> str:
    """'smaller than 32 px', '32-64 px', 'larger than 64 px' (for messages)."""
    lo, hi = stride_band(stride, strides)
    if lo == 0.0:
        return f"smaller than {hi:g} px"
    if math.isinf(hi):
        return f"of at least {lo:g} px"
    return f"of {lo:g}-{hi:g} px"
