"""How far a candidate model's detections agree with the live model's on the same frames. Pure numpy.

The live model is the reference: a candidate box *matches* when it overlaps an unmatched live box of the
same class name at IoU >= the threshold (0.5). Matching is greedy, candidate boxes by descending score, each
taking the live box it overlaps most (what COCO-style evaluation does with ground truth). Then per class and
overall: precision = matched / candidate boxes, recall = matched / live boxes.

`disagreement(live, candidate)` is the one-frame number (1 − F1 of that matching: 0 = the same boxes, 1 =
nothing in common) the hard-example capture uses; `AgreementWindow` accumulates a shadow run.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from agent.protocol.messages import Detection
from agent.protocol.shadow import SCORE_BINS, Agreement, ClassAgreement, LatencyStats, ScoreStats

IOU_THRESHOLD = 0.5
_FINE_BINS = 100  # score quantiles are read from a 0.01-wide histogram (bounded memory, exact counts)
_LATENCY_SAMPLES = 2048  # the latency percentiles cover the most recent shadow frames


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N×4 xyxy) with every box of `b` (M×4): N×M."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _boxes(dets: Sequence[Detection]) -> np.ndarray:
    return np.array([d.box for d in dets], dtype=np.float64).reshape(-1, 4)


def match(live: Sequence[Detection], candidate: Sequence[Detection],
          iou_threshold: float = IOU_THRESHOLD) -> list[tuple[int, int, float]]:
    """Matched pairs (live index, candidate index, IoU): each box in at most one pair, same class name."""
    iou = iou_matrix(_boxes(live), _boxes(candidate))
    used = np.zeros(len(live), dtype=bool)
    pairs: list[tuple[int, int, float]] = []
    for j in sorted(range(len(candidate)), key=lambda k: -candidate[k].score):
        best, best_iou = -1, iou_threshold
        for i in range(len(live)):
            if not used[i] and live[i].class_name == candidate[j].class_name and iou[i, j] >= best_iou:
                best, best_iou = i, float(iou[i, j])
        if best >= 0:
            used[best] = True
            pairs.append((best, j, best_iou))
    return pairs


def disagreement(live: list[Detection], candidate: list[Detection], iou_threshold: float = IOU_THRESHOLD) -> float:
    """1 − F1 of the candidate against the live model on one frame: 0 = the same boxes (or both empty),
    1 = no box in common. = (unmatched live + unmatched candidate boxes) / (live + candidate boxes)."""
    total = len(live) + len(candidate)
    if total == 0:
        return 0.0
    return 1.0 - 2.0 * len(match(live, candidate, iou_threshold)) / total


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


class _Scores:
    """Exact counts in 0.01 bins: quantiles and the coarse histogram without keeping every score."""

    def __init__(self) -> None:
        self.hist = np.zeros(_FINE_BINS, dtype=np.int64)
        self.total = 0.0

    def add(self, scores: Sequence[float]) -> None:
        if not scores:
            return
        s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
        idx = np.minimum((s * _FINE_BINS).astype(np.int64), _FINE_BINS - 1)
        np.add.at(self.hist, idx, 1)
        self.total += float(s.sum())

    def quantile(self, q: float) -> float | None:
        n = int(self.hist.sum())
        if n == 0:
            return None
        k = int(np.searchsorted(np.cumsum(self.hist), math.ceil(q * n - 1e-9)))
        return round((k + 1) / _FINE_BINS, 4)

    def stats(self) -> ScoreStats:
        n = int(self.hist.sum())
        coarse = self.hist.reshape(SCORE_BINS, -1).sum(axis=1)
        return ScoreStats(count=n, mean=self.total / n if n else None, p10=self.quantile(0.1),
                          p50=self.quantile(0.5), p90=self.quantile(0.9), hist=[int(c) for c in coarse])


def latency_stats(samples_s: Sequence[float]) -> LatencyStats:
    if not samples_s:
        return LatencyStats()
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return LatencyStats(samples=len(ms), p50_ms=round(float(np.percentile(ms, 50)), 3),
                        p95_ms=round(float(np.percentile(ms, 95)), 3))


class AgreementWindow:
    """The agreement of a candidate with the live model, accumulated frame by frame (not thread-safe:
    one shadow thread adds, readers take `summary()` under the owner's lock)."""

    def __init__(self, iou_threshold: float = IOU_THRESHOLD) -> None:
        self.iou_threshold = iou_threshold
        self.frames = 0
        self.counts: dict[str, list[int]] = {}  # class name → [live, candidate, matched]
        self.iou_sum = 0.0
        self.delta_sum = 0.0
        self.live_scores = _Scores()
        self.candidate_scores = _Scores()
        self.candidate_latency: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self.live_latency: deque[float] = deque(maxlen=_LATENCY_SAMPLES)

    def add(self, live: Sequence[Detection], candidate: Sequence[Detection],
            candidate_latency_s: float | None = None, live_latency_s: float | None = None) -> float:
        """Count one frame both models saw; returns its disagreement."""
        pairs = match(live, candidate, self.iou_threshold)
        self.frames += 1
        for d in live:
            self.counts.setdefault(d.class_name, [0, 0, 0])[0] += 1
        for d in candidate:
            self.counts.setdefault(d.class_name, [0, 0, 0])[1] += 1
        for i, j, iou in pairs:
            self.counts[live[i].class_name][2] += 1
            self.iou_sum += iou
            self.delta_sum += candidate[j].score - live[i].score
        self.live_scores.add([d.score for d in live])
        self.candidate_scores.add([d.score for d in candidate])
        if candidate_latency_s is not None:
            self.candidate_latency.append(candidate_latency_s)
        if live_latency_s is not None:
            self.live_latency.append(live_latency_s)
        total = len(live) + len(candidate)
        return 1.0 - 2.0 * len(pairs) / total if total else 0.0

    def summary(self) -> Agreement:
        per_class = {name: ClassAgreement(live=c[0], candidate=c[1], matched=c[2], precision=_ratio(c[2], c[1]),
                                          recall=_ratio(c[2], c[0]))
                     for name, c in sorted(self.counts.items())}
        n_live = sum(c[0] for c in self.counts.values())
        n_cand = sum(c[1] for c in self.counts.values())
        matched = sum(c[2] for c in self.counts.values())
        return Agreement(
            frames=self.frames, live=n_live, candidate=n_cand, matched=matched,
            precision=_ratio(matched, n_cand), recall=_ratio(matched, n_live),
            # no box from either model on every frame: full agreement (as disagreement() says)
            f1=(_ratio(2 * matched, n_live + n_cand) or (0.0 if n_live + n_cand else 1.0)) if self.frames else None,
            mean_iou=self.iou_sum / matched if matched else None,
            score_delta=self.delta_sum / matched if matched else None,
            per_class=per_class, live_scores=self.live_scores.stats(),
            candidate_scores=self.candidate_scores.stats(),
        )


__all__ = ["IOU_THRESHOLD", "AgreementWindow", "disagreement", "iou_matrix", "latency_stats", "match"]
