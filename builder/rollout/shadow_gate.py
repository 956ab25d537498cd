"""The shadow gate: may a wave go on, given what its nodes' shadow runs of the candidate reported? Pure.

A node's `ShadowReport` (agent.protocol.shadow) compares the candidate with the model it runs live, on its
own frames. The gate asks for enough compared frames and enough agreement — recall (live boxes the
candidate also finds), precision (candidate boxes the live model also reports), F1 — and optionally a
bounded candidate latency against the live model's on the same frames. Agreement is not accuracy: a
candidate meant to fix the live model's misses *should* disagree somewhat, so set the floors from the
change you expect (docs/SHADOW.md), and per class when one class is what the candidate changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.protocol.shadow import ShadowReport, ShadowState


@dataclass(frozen=True)
class ShadowThresholds:
    min_frames: int = 20  # compared frames before the numbers mean anything
    min_f1: float | None = 0.8
    min_recall: float | None = None
    min_precision: float | None = None
    min_class_recall: dict[str, float] = field(default_factory=dict)  # class name → floor
    max_latency_ratio: float | None = None  # candidate p95 / live p95 on the same frames
    states: tuple[str, ...] = (ShadowState.RUNNING.value, ShadowState.DONE.value)


@dataclass
class ShadowVerdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)  # why not
    score: float | None = None  # the F1 of the report (what a dashboard or a looser gate can show)


def _floor(what: str, value: float | None, floor: float | None, reasons: list[str]) -> None:
    if floor is None:
        return
    if value is None:
        reasons.append(f"{what} not measured (no boxes to compare)")
    elif value < floor:
        reasons.append(f"{what} {value:.3f} below {floor:g}")


def judge_shadow(report: ShadowReport | None, th: ShadowThresholds) -> ShadowVerdict:
    """The verdict on one node's latest shadow report of the candidate."""
    if report is None:
        return ShadowVerdict(False, ["no shadow report"])
    a = report.agreement
    if report.state.value not in th.states or a is None:
        why = f": {report.reason}" if report.reason else ""
        return ShadowVerdict(False, [f"no agreement yet (shadow run {report.state.value}{why})"])
    v = ShadowVerdict(True, score=a.f1)
    if a.frames < th.min_frames:
        v.reasons.append(f"{a.frames} frames compared, fewer than {th.min_frames}")
    _floor("F1", a.f1, th.min_f1, v.reasons)
    _floor("recall", a.recall, th.min_recall, v.reasons)
    _floor("precision", a.precision, th.min_precision, v.reasons)
    for name, floor in sorted(th.min_class_recall.items()):
        c = a.per_class.get(name)
        _floor(f"recall of {name}", c.recall if c else None, floor, v.reasons)
    if th.max_latency_ratio is not None:
        cand, live = report.candidate_latency, report.live_latency
        if cand is None or live is None or not cand.p95_ms or not live.p95_ms:
            v.reasons.append("latency not measured")
        elif cand.p95_ms / live.p95_ms > th.max_latency_ratio:
            v.reasons.append(f"candidate p95 {cand.p95_ms:.1f} ms is {cand.p95_ms / live.p95_ms:.2f}x the live "
                             f"{live.p95_ms:.1f} ms (max {th.max_latency_ratio:g}x)")
    v.ok = not v.reasons
    return v


def wave_shadow_verdict(reports: dict[str, ShadowReport | None], th: ShadowThresholds,
                        min_passing: float = 1.0) -> tuple[bool, dict[str, ShadowVerdict]]:
    """A wave passes when at least `min_passing` of its nodes' reports pass (each node's verdict returned)."""
    verdicts = {node: judge_shadow(rep, th) for node, rep in sorted(reports.items())}
    if not verdicts:
        return True, verdicts
    passing = sum(v.ok for v in verdicts.values()) / len(verdicts)
    return passing >= min_passing - 1e-9, verdicts


__all__ = ["ShadowThresholds", "ShadowVerdict", "judge_shadow", "wave_shadow_verdict"]
