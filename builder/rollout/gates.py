"""Health gates: a node's health after the update against its own health before it. Pure functions.

Measured from what nodes publish (agent.protocol.telemetry.Telemetry, DetectionsMessage):
- p95 latency: the median over the window of `latency.invoke.p95_ms` (the model's own time; the camera's
  wait is not the model's fault), ratio after/before;
- error rate: inference errors / frames inferred, from the counters' increase over the window;
- detection rate: detections per inferred frame from `Telemetry.detections` (every frame of the model
  counted on the node), relative change; for a node that does not report it (an agent before that field),
  detections per second seen on the detections topic (the agent rate-limits and skips empty frames, so
  that is a coarse signal: it catches a model that goes blind or floods).
A gate whose numbers are missing on either side is skipped, and the verdict says so.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Thresholds:
    success: float = 1.0  # fraction of a wave's nodes that must commit and stay healthy
    failure: float = 0.0  # fraction of a wave's nodes failing above which the rollout halts
    soak_s: float = 30.0
    max_latency_ratio: float | None = 1.5
    max_error_rate: float | None = 0.05
    max_detection_rate_change: float | None = None  # e.g. 0.5 = +-50 %
    wave_timeout_s: float = 900.0


@dataclass(frozen=True)
class Sample:
    """One telemetry message, reduced to what the gates read."""

    t: float  # arrival, time.time()
    version: int | None
    p95_ms: float | None
    frames: int
    errors: int
    # Telemetry.detections of this model in the message's window; None from agents that do not report it
    detection_frames: int | None = None
    detection_count: int | None = None


@dataclass(frozen=True)
class DetectionSample:
    t: float
    version: int
    count: int


@dataclass(frozen=True)
class Health:
    p95_ms: float | None = None
    error_rate: float | None = None
    detection_rate: float | None = None  # per second, from the detections topic
    samples: int = 0
    detections_per_frame: float | None = None  # from telemetry


def measure(samples: list[Sample], detections: list[DetectionSample], version: int | None,
            start: float, end: float) -> Health:
    """Health of `version` on one node from its samples in [start, end]."""
    win = [s for s in samples if s.version == version and start <= s.t <= end]
    p95s = [s.p95_ms for s in win if s.p95_ms is not None]
    p95 = statistics.median(p95s) if p95s else None
    err = None
    if len(win) >= 2:
        frames = win[-1].frames - win[0].frames
        errors = win[-1].errors - win[0].errors
        if frames > 0:
            err = max(0, errors) / frames
    span = (win[-1].t - win[0].t) if len(win) >= 2 else 0.0
    dets = sum(d.count for d in detections if d.version == version and start <= d.t <= end)
    rate = dets / span if span > 0 else None
    counted = [(s.detection_frames, s.detection_count) for s in win
               if s.detection_frames is not None and s.detection_count is not None]
    det_frames = sum(f for f, _ in counted)
    per_frame = sum(c for _, c in counted) / det_frames if det_frames > 0 else None
    return Health(p95_ms=p95, error_rate=err, detection_rate=rate, samples=len(win), detections_per_frame=per_frame)


@dataclass
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)  # why not ok
    skipped: list[str] = field(default_factory=list)  # gates without data


def judge(before: Health, after: Health, th: Thresholds) -> Verdict:
    """Compare a node's health after the update with before it."""
    v = Verdict(ok=True)
    if th.max_latency_ratio is not None:
        if before.p95_ms and after.p95_ms is not None:
            ratio = after.p95_ms / before.p95_ms
            if ratio > th.max_latency_ratio:
                v.reasons.append(f"p95 latency {after.p95_ms:.1f} ms is {ratio:.2f}x the {before.p95_ms:.1f} ms "
                                 f"before (max {th.max_latency_ratio:g}x)")
        else:
            v.skipped.append("latency")
    if th.max_error_rate is not None:
        if after.error_rate is not None:
            if after.error_rate > th.max_error_rate:
                v.reasons.append(f"error rate {after.error_rate:.1%} above {th.max_error_rate:.1%}")
        else:
            v.skipped.append("error rate")
    if th.max_detection_rate_change is not None:
        _judge_detections(before, after, th.max_detection_rate_change, v)
    v.ok = not v.reasons
    return v


def _judge_detections(before: Health, after: Health, limit: float, v: Verdict) -> None:
    """Detections per frame when both sides report them (the node's own counts of every frame), else the
    coarse detections per second from the detections topic; skipped without a non-zero "before"."""
    b, a = before.detections_per_frame, after.detections_per_frame
    if b is not None and a is not None:
        if b == 0:
            if a == 0:
                return  # saw nothing before, sees nothing now: no change
            v.skipped.append("detection rate (none before)")
            return
        change = a / b - 1.0
        if abs(change) > limit:
            v.reasons.append(f"detections per frame changed {change:+.0%} ({b:.2f} -> {a:.2f}; max +-{limit:.0%})")
        return
    if before.detection_rate and after.detection_rate is not None:
        change = after.detection_rate / before.detection_rate - 1.0
        if abs(change) > limit:
            v.reasons.append(f"detection rate changed {change:+.0%} (max +-{limit:.0%})")
    else:
        v.skipped.append("detection rate")


def wave_verdict(statuses: list[str], th: Thresholds) -> str:
    """'passed' | 'failed' | 'running' for one wave from its nodes' statuses (see state.NODE_STATUSES)."""
    n = len(statuses)
    if n == 0:
        return "passed"
    failed = sum(s == "failed" for s in statuses)
    healthy = sum(s == "healthy" for s in statuses)
    if failed / n > th.failure + 1e-9:
        return "failed"
    if healthy / n >= th.success - 1e-9:
        return "passed"
    if healthy + failed == n:  # everyone is done and too few made it
        return "failed"
    return "running"


__all__ = ["DetectionSample", "Health", "Sample", "Thresholds", "Verdict", "judge", "measure", "wave_verdict"]
