"""A node's latest shadow run (agent.protocol.shadow.ShadowReport) as the dashboard shows it (docs/SHADOW.md).

The report is retained on `{prefix}/node/{node}/shadow/report`. The view keeps what the page draws: the
candidate and live model, the run's state, frames compared, matched boxes, precision / recall / F1 of the
candidate against the live model (overall and per class), both models' latency on the same frames, and
when it was reported. It is bounded whatever a node sends: the payload is capped (`MAX_REPORT_BYTES`),
per-class rows are the `MAX_CLASSES` classes with the most boxes, and free text is cut, so 1,000 nodes
running shadows keep the page's events small.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agent.protocol.messages import ModelRef
from agent.protocol.shadow import ClassAgreement, LatencyStats, ShadowReport
from builder.dashboard.payloads import MalformedPayload, parse_model

LEAF = "shadow/report"
MAX_REPORT_BYTES = 64 * 1024  # a real report is ~2 KB with a dozen classes
MAX_CLASSES = 12
TEXT_CHARS = 200


class ClassRow(ClassAgreement):
    name: str


class ShadowView(BaseModel):
    """One node's shadow run, exactly as sent to the page (JSON); None figures: not reported."""

    state: str  # verifying | running | done | stopped | rejected | failed
    reason: str | None = None
    request_id: str | None = None
    candidate: ModelRef | None = None
    live: ModelRef | None = None
    ts: float  # when the node reported it (node clock, seconds since the epoch)
    started: float | None = None
    window_s: float = 0.0
    frames: int = 0  # frames both models saw
    live_boxes: int = 0
    candidate_boxes: int = 0
    matched: int = 0  # candidate boxes matching a live box
    precision: float | None = None  # matched / candidate
    recall: float | None = None  # matched / live
    f1: float | None = None  # the agreement figure of the node table (the shadow gate's score)
    mean_iou: float | None = None
    score_delta: float | None = None
    classes: list[ClassRow] = Field(default_factory=list)  # most boxes first, at most MAX_CLASSES
    classes_total: int = 0
    candidate_latency: LatencyStats | None = None
    live_latency: LatencyStats | None = None
    shadow_frames: int = 0
    shadow_rate_hz: float | None = None
    errors: int = 0
    skipped_budget: int = 0
    skipped_busy: int = 0
    live_slowdown: float | None = None


def _text(s: str | None) -> str | None:
    return None if s is None else s[:TEXT_CHARS]


def read_shadow_report(payload: bytes, node: str) -> ShadowView:
    """Parse one report published by `node`; raise MalformedPayload with a short reason."""
    r = parse_model(ShadowReport, payload, "shadow report", max_bytes=MAX_REPORT_BYTES)
    if r.node != node:
        raise MalformedPayload(f"shadow report names node {r.node[:64]!r}, published under {node!r}")
    a = r.agreement
    rows = [ClassRow(name=_text(name) or "", **c.model_dump()) for name, c in (a.per_class.items() if a else ())]
    rows.sort(key=lambda c: (-(c.live + c.candidate), c.name))
    return ShadowView(
        state=r.state.value, reason=_text(r.reason), request_id=_text(r.request_id),
        candidate=_model_ref(r.candidate), live=_model_ref(r.live),
        ts=r.ts.timestamp(), started=r.started.timestamp() if r.started else None, window_s=r.window_s,
        frames=a.frames if a else 0, live_boxes=a.live if a else 0, candidate_boxes=a.candidate if a else 0,
        matched=a.matched if a else 0, precision=a.precision if a else None, recall=a.recall if a else None,
        f1=a.f1 if a else None, mean_iou=a.mean_iou if a else None, score_delta=a.score_delta if a else None,
        classes=rows[:MAX_CLASSES], classes_total=len(rows),
        candidate_latency=r.candidate_latency, live_latency=r.live_latency,
        shadow_frames=r.shadow_frames, shadow_rate_hz=r.shadow_rate_hz, errors=r.errors,
        skipped_budget=r.skipped_budget, skipped_busy=r.skipped_busy, live_slowdown=r.live_slowdown,
    )


def _model_ref(m: ModelRef | None) -> ModelRef | None:
    return None if m is None else m.model_copy(update={"name": m.name[:TEXT_CHARS]})


def summary(v: ShadowView, candidate: bool = True) -> str:
    """A few words for the terminal table and watch events: state, agreement (F1), frames, the candidate."""
    f1 = "-" if v.f1 is None else f"{v.f1:.0%}"
    cand = f" {v.candidate.name} v{v.candidate.version}" if v.candidate and candidate else ""
    return f"{v.state} F1 {f1} {v.frames}fr{cand}"
