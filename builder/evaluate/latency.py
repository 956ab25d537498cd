"""The one CPU latency method, shared by the convert report (report.md/json) and `make bench` (bench_variants).

Warm-up, then interleaved rounds (A B C A B C …: one call of every variant per round) at a fixed thread
count, so background load and thermal drift hit all variants alike. Per variant: the median with its
p10–p90 spread. Ratios to the reference are paired: computed per round (t_v[i] / t_ref[i]), then summarised
the same way, so a slow round cancels out instead of widening the ratio. The statistics are pure numpy
functions; `interleaved_times` is the only part that runs anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WARMUP = 3  # calls per variant before the timed rounds (first invokes allocate and pack weights)
LOW, HIGH = 10, 90  # the spread shown beside every median: p10–p90


@dataclass(frozen=True)
class Spread:
    """Median and p10–p90 of a sample."""

    median: float
    p10: float
    p90: float

    def text(self, fmt: str = ".2f") -> str:
        return f"{self.median:{fmt}} ({self.p10:{fmt}}–{self.p90:{fmt}})"


@dataclass(frozen=True)
class LatencyResult:
    """Milliseconds per call of each variant and the paired ratio to `reference`, with the method used."""

    ms: dict[str, Spread]
    ratio: dict[str, Spread]
    reference: str
    rounds: int
    warmup: int
    threads: int | None

    def method(self) -> dict[str, Any]:
        return method_dict(self.rounds, self.warmup, self.threads, self.reference)

    def entry(self, key: str) -> dict[str, float]:
        """The fields a variant's result row carries (report.json `variants`, bench variants.json)."""
        m, r = self.ms[key], self.ratio[key]
        return {"latency_ms": m.median, "latency_p10_ms": m.p10, "latency_p90_ms": m.p90,
                "latency_ratio": r.median, "latency_ratio_p10": r.p10, "latency_ratio_p90": r.p90}


def method_dict(rounds: int, warmup: int, threads: int | None, reference: str) -> dict[str, Any]:
    return {"name": "interleaved-paired", "warmup": warmup, "rounds": rounds, "threads": threads,
            "reference": reference, "spread": f"p{LOW}-p{HIGH}",
            "text": method_text(rounds, warmup, threads, reference)}


def method_text(rounds: int, warmup: int, threads: int | None, reference: str) -> str:
    return (f"{warmup} warm-up calls per variant, then {rounds} interleaved rounds (one call of each variant per "
            f"round), {threads if threads else 'default'} threads; median (p{LOW}–p{HIGH}) per variant; ratios to "
            f"{reference} computed per round (paired), median (p{LOW}–p{HIGH})")


def spread(sample: Sequence[float] | np.ndarray) -> Spread:
    a = np.asarray(sample, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    lo, med, hi = np.percentile(a, [LOW, 50, HIGH])
    return Spread(float(med), float(lo), float(hi))


def paired_ratios(times: Mapping[str, Sequence[float]], reference: str) -> dict[str, np.ndarray]:
    """Per-round ratio of every variant to the reference (rounds must line up one to one)."""
    ref = np.asarray(times[reference], dtype=np.float64)
    out = {}
    for k, t in times.items():
        a = np.asarray(t, dtype=np.float64)
        if a.shape != ref.shape:
            raise ValueError(f"{k}: {a.size} rounds, reference {reference} has {ref.size}")
        out[k] = a / ref
    return out


def summarize(
    times_s: Mapping[str, Sequence[float]], reference: str, warmup: int, threads: int | None
) -> LatencyResult:
    """Seconds per call per round (from `interleaved_times`) → the result in milliseconds and ratios."""
    ms = {k: spread(np.asarray(t) * 1000) for k, t in times_s.items()}
    ratio = {k: spread(r) for k, r in paired_ratios(times_s, reference).items()}
    rounds = len(times_s[reference])
    return LatencyResult(ms, ratio, reference, rounds, warmup, threads)


def interleaved_times(
    calls: Mapping[str, Callable[[], object]], rounds: int, warmup: int = WARMUP,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each variant: `warmup` calls each, then `rounds` rounds of one call each in order."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            t0 = clock()
            call()
            times[k].append(clock() - t0)
    return times


def measure(
    calls: Mapping[str, Callable[[], object]], reference: str, rounds: int, threads: int | None,
    warmup: int = WARMUP,
) -> LatencyResult:
    """The method end to end: warm up, time interleaved rounds, summarise with paired ratios."""
    if reference not in calls:
        raise ValueError(f"reference {reference!r} is not among {sorted(calls)}")
    return summarize(interleaved_times(calls, rounds, warmup), reference, warmup, threads)
