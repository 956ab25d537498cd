"""COCO-style detection mAP (mAP50-95, mAP50, per class) in pure numpy.

A line-for-line reimplementation of pycocotools' COCOeval for bounding boxes with area range "all":
per image and class, detections sorted by score and cut at `max_dets` (100), greedy matching of each
detection to the unmatched ground truth of highest IoU at each of the ten IoU thresholds 0.50:0.05:0.95,
precision made monotone, sampled at 101 recall points, averaged over thresholds, recall points and
classes that have ground truth. tests/test_metrics.py cross-checks it against pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class ImageBoxes:
    """Boxes of one image in pixel xyxy. `scores` is None for ground truth."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray | None = None


@dataclass
class MapResult:
    map50_95: float
    map50: float
    per_class: list[float | None] = field(default_factory=list)  # mAP50-95 per class (None: no ground truth)
    per_class50: list[float | None] = field(default_factory=list)
    images: int = 0

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, object]:
        names = list(class_names) if class_names else [str(i) for i in range(len(self.per_class))]
        return {
            "map50_95": self.map50_95,
            "map50": self.map50,
            "images": self.images,
            "per_class": {n: {"map50_95": a, "map50": b} for n, a, b in zip(names, self.per_class, self.per_class50, strict=False)},
        }


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) against (M, 4) xyxy boxes, COCO convention (no +1)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(ious: np.ndarray, n_det: int, n_gt: int) -> np.ndarray:
    """(T, n_det) bool: detection matched at each IoU threshold (COCOeval.evaluateImg, no crowd/ignore)."""
    matched = np.zeros((len(IOU_THRESHOLDS), n_det), dtype=bool)
    for t, thr in enumerate(IOU_THRESHOLDS):
        gt_taken = np.zeros(n_gt, dtype=bool)
        for d in range(n_det):
            best = min(float(thr), 1 - 1e-10)
            m = -1
            for g in range(n_gt):
                if gt_taken[g]:
                    continue
                if ious[d, g] < best:
                    continue
                best = ious[d, g]
                m = g
            if m >= 0:
                gt_taken[m] = True
                matched[t, d] = True
    return matched


_Record = tuple[np.ndarray, np.ndarray, int]  # (scores (D,), matched (T, D), number of ground truths)


def _records(
    ground_truth: Sequence[ImageBoxes], detections: Sequence[ImageBoxes], num_classes: int, max_dets: int
) -> list[list[_Record]]:
    """Per image, per class: the COCOeval.evaluateImg result. Independent of the other images."""
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection images")
    out: list[list[_Record]] = []
    for gt, dt in zip(ground_truth, detections, strict=True):
        gcls = np.asarray(gt.classes).reshape(-1)
        dcls = np.asarray(dt.classes).reshape(-1)
        dscores = np.asarray(dt.scores if dt.scores is not None else np.ones(len(dcls))).reshape(-1)
        per: list[_Record] = []
        for k in range(num_classes):
            g = np.asarray(gt.boxes).reshape(-1, 4)[gcls == k]
            dmask = dcls == k
            d = np.asarray(dt.boxes).reshape(-1, 4)[dmask]
            s = dscores[dmask]
            order = np.argsort(-s, kind="mergesort")[:max_dets]
            d, s = d[order], s[order]
            if len(d) and len(g):
                matched = _match(iou_matrix(d, g), len(d), len(g))
            else:
                matched = np.zeros((len(IOU_THRESHOLDS), len(d)), dtype=bool)
            per.append((s.astype(np.float64), matched, len(g)))
        out.append(per)
    return out


def _accumulate(records: Sequence[list[_Record]], num_classes: int) -> np.ndarray:
    """(T, R, K) precision at the recall points; -1 where a class has no ground truth (COCOeval.accumulate)."""
    n_t = len(IOU_THRESHOLDS)
    precision = -np.ones((n_t, len(RECALL_POINTS), num_classes))
    for k in range(num_classes):
        n_gt = sum(r[k][2] for r in records)
        if n_gt == 0:
            continue
        scores = np.concatenate([r[k][0] for r in records])
        if scores.size == 0:
            precision[:, :, k] = 0.0
            continue
        matched = np.concatenate([r[k][1] for r in records], axis=1)
        order = np.argsort(-scores, kind="mergesort")
        tps = np.cumsum(matched[:, order], axis=1).astype(np.float64)
        fps = np.cumsum(~matched[:, order], axis=1).astype(np.float64)
        for t in range(n_t):
            tp, fp = tps[t], fps[t]
            rc = tp / n_gt
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # monotone precision envelope
            idx = np.searchsorted(rc, RECALL_POINTS, side="left")
            q = np.zeros(len(RECALL_POINTS))
            valid = idx < len(pr)
            q[valid] = pr[idx[valid]]
            precision[t, :, k] = q
    return precision


def _mean_valid(a: np.ndarray) -> float:
    v = a[a > -1]
    return float(v.mean()) if v.size else -1.0


def _result(precision: np.ndarray, images: int) -> MapResult:
    k_range = range(precision.shape[2])
    return MapResult(
        map50_95=max(_mean_valid(precision), 0.0),
        map50=max(_mean_valid(precision[0]), 0.0),
        per_class=[None if (precision[:, :, k] <= -1).all() else _mean_valid(precision[:, :, k]) for k in k_range],
        per_class50=[None if (precision[0, :, k] <= -1).all() else _mean_valid(precision[0, :, k]) for k in k_range],
        images=images,
    )


def coco_map(
    ground_truth: Sequence[ImageBoxes],
    detections: Sequence[ImageBoxes],
    num_classes: int,
    max_dets: int = 100,
) -> MapResult:
    """mAP over images given in the same order for ground truth and detections."""
    recs = _records(ground_truth, detections, num_classes, max_dets)
    return _result(_accumulate(recs, num_classes), len(recs))


def paired_bootstrap(
    ground_truth: Sequence[ImageBoxes],
    det_a: Sequence[ImageBoxes],
    det_b: Sequence[ImageBoxes],
    num_classes: int,
    n: int = 500,
    seed: int = 0,
    max_dets: int = 100,
) -> tuple[float, float]:
    """95% interval of mAP50-95(b) - mAP50-95(a), resampling the same images for both (paired).

    Per-image matching does not depend on the other images, so it is computed once and only the
    accumulation is repeated per resample.
    """
    ra = _records(ground_truth, det_a, num_classes, max_dets)
    rb = _records(ground_truth, det_b, num_classes, max_dets)
    rng = np.random.default_rng(seed)
    m = len(ra)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, m, m)
        a = _mean_valid(_accumulate([ra[i] for i in idx], num_classes))
        b = _mean_valid(_accumulate([rb[i] for i in idx], num_classes))
        diffs.append(b - a)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)
