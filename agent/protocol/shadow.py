"""Shadow runs: the request a node reads on `{prefix}/node/{node}/shadow` and the report it retains on
`{prefix}/node/{node}/shadow/report` (see docs/SHADOW.md).

The candidate travels as an update `Announcement` (the exact signed manifest bytes, key id, signature, base
URL): the node authenticates and downloads it with the update path's own code, stores it apart from the
model store, and never makes it the live model. The sampling knobs are not signed; the node clamps them
(`MAX_RATE_HZ`, `MAX_SLOWDOWN`) so a request can at most spend the documented budget.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from agent.protocol.messages import Announcement, ModelRef, utcnow

MAX_RATE_HZ = 10.0  # shadow frames per second a request may ask for at most
MAX_SLOWDOWN = 0.25  # the largest live-FPS loss a request may allow
SCORE_BINS = 10  # the reported histograms: SCORE_BINS equal bins over [0, 1]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer builders may add fields


class ShadowSampling(_Msg):
    """Which live frames the candidate also sees."""

    every_nth: int = Field(default=1, ge=1, le=10_000, description="consider every Nth inferred live frame")
    max_rate_hz: float = Field(default=1.0, gt=0, le=MAX_RATE_HZ, description="at most this many shadow frames/s")
    max_live_slowdown: float = Field(
        default=0.10, gt=0, le=MAX_SLOWDOWN,
        description="skip shadow frames while the live pipeline's estimated FPS loss is above this fraction")


class ShadowRequest(_Msg):
    """Retained on `{prefix}/node/{node}/shadow`; an empty retained message stops the run."""

    request_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    candidate: Announcement
    sampling: ShadowSampling = Field(default_factory=ShadowSampling)
    iou_threshold: float = Field(default=0.5, gt=0, le=1)
    max_frames: int | None = Field(default=None, ge=1, description="done after comparing this many frames")
    duration_s: float | None = Field(default=None, gt=0, description="done after this long")
    report_every_s: float = Field(default=5.0, ge=0.5, le=3600)


class ShadowState(StrEnum):
    VERIFYING = "verifying"  # authenticating and downloading the candidate
    RUNNING = "running"  # comparing; reports carry the agreement so far
    DONE = "done"  # max_frames or duration_s reached; the candidate is unloaded
    STOPPED = "stopped"  # the request was cleared (empty retained message) or replaced
    REJECTED = "rejected"  # the candidate is not signed by a trusted key, expired, not for this node, ...
    FAILED = "failed"  # download or load failed


class ScoreStats(_Msg):
    """A score distribution: quantiles at 0.01 resolution (the upper edge of the bin where the cumulative
    count reaches q) and counts in SCORE_BINS equal bins over [0, 1]."""

    count: int = 0
    mean: float | None = None
    p10: float | None = None
    p50: float | None = None
    p90: float | None = None
    hist: list[int] = Field(default_factory=lambda: [0] * SCORE_BINS)


class ClassAgreement(_Msg):
    live: int = 0  # boxes the live model reported
    candidate: int = 0  # boxes the candidate reported
    matched: int = 0  # candidate boxes matching a live box (IoU >= threshold, same class)
    precision: float | None = None  # matched / candidate (None: the candidate reported none)
    recall: float | None = None  # matched / live (None: the live model reported none)


class Agreement(ClassAgreement):
    """The candidate against the live model over the frames both saw (the live model is the reference)."""

    frames: int = 0
    f1: float | None = None
    mean_iou: float | None = None  # over matched pairs
    score_delta: float | None = None  # mean candidate − live score over matched pairs
    per_class: dict[str, ClassAgreement] = Field(default_factory=dict)
    live_scores: ScoreStats = Field(default_factory=ScoreStats)
    candidate_scores: ScoreStats = Field(default_factory=ScoreStats)


class LatencyStats(_Msg):
    samples: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None


class ShadowReport(_Msg):
    """Retained on `{prefix}/node/{node}/shadow/report`: every state change and every report_every_s."""

    node: str
    ts: datetime = Field(default_factory=utcnow)
    request_id: str | None = None
    state: ShadowState
    reason: str | None = None
    live: ModelRef | None = None
    candidate: ModelRef | None = None
    sampling: ShadowSampling | None = None
    started: datetime | None = None
    window_s: float = 0.0  # seconds since the comparison started
    agreement: Agreement | None = None
    candidate_latency: LatencyStats | None = None
    live_latency: LatencyStats | None = None  # of the same frames, for scale
    shadow_frames: int = 0
    shadow_rate_hz: float | None = None
    errors: int = 0  # candidate inference errors
    skipped_budget: int = 0  # sampled frames skipped: the live pipeline's slowdown was at the bound
    skipped_busy: int = 0  # sampled frames skipped: the previous shadow frame was still running
    live_slowdown: float | None = None  # the live pipeline's estimated FPS loss to the shadow


__all__ = ["MAX_RATE_HZ", "MAX_SLOWDOWN", "SCORE_BINS", "Agreement", "ClassAgreement", "LatencyStats",
           "ScoreStats", "ShadowReport", "ShadowRequest", "ShadowSampling", "ShadowState"]
