"""A shadow run: a candidate model sees a sample of the live frames beside the live model, never in its place.

The pipeline's shadow hook (`Pipeline.set_shadow_hook`) hands every inferred frame to `ShadowRunner.offer`
on the inference thread, which only decides and hands over (no copy: frames are never written after capture):

- every `every_nth` live frame, at most `max_rate_hz` shadow frames per second, one at a time (a frame
  offered while the previous shadow frame still runs is skipped, `skipped_busy`);
- the budget (`LiveBudget`): the live frames' own model time is tracked apart for frames that overlapped a
  shadow frame and frames that did not; the estimated FPS loss = overlapped fraction × relative slowdown.
  While it is above `max_live_slowdown`, sampled frames are skipped (`skipped_budget`).

The candidate is driven by its own thread; where it runs is the engine given to the runner: the agent gives
it an `agent.inference.shadow_child.ChildEngine` (a child process at nice 19 running the candidate bundle's
CPU model with one XNNPACK thread: the TPU stays the live model's, the kernel gives the live threads the
cores first, and no GIL is shared). Both models' engine-level detections (before any camera filter or zone)
go into an `AgreementWindow`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.inference.agreement import AgreementWindow, latency_stats
from agent.inference.config import BackendConfig, DetectConfig, EngineConfig
from agent.inference.frames import EngineLike, FrameResult
from agent.protocol.messages import Detection
from agent.protocol.shadow import Agreement, LatencyStats, ShadowSampling

# Called on the shadow thread after each compared frame: (live result, live detections, candidate detections).
Compared = Callable[[FrameResult, list[Detection], list[Detection]], None]
log = logging.getLogger(__name__)

_MIN_BASELINE = 10  # live frames without overlap needed before the budget judges anything


@dataclass(frozen=True)
class CandidateConfig:
    """The candidate's engine settings: the live model's detection settings (so both report alike), the
    CPU backend only, `threads` XNNPACK threads (one by default: the other cores stay the live loop's)."""

    backend: BackendConfig
    detect: DetectConfig
    state_dir: Path


def candidate_config(live: EngineConfig, threads: int = 1) -> CandidateConfig:
    backend = BackendConfig(prefer="cpu", detectors={"cpu": {"type": "cpu", "threads": threads}})  # type: ignore[dict-item]
    return CandidateConfig(backend, live.detect, live.state_dir)


class LiveBudget:
    """The live pipeline's FPS loss to the shadow, estimated from the live frames' own model time.

    loss = f × max(0, t_overlap / t_alone − 1), f = fraction of live frames that overlapped a shadow frame,
    t = exponentially weighted mean model time per frame. It is the live time per frame added by the shadow
    over the live time per frame, i.e. the FPS lost when the live loop is busy all the time (an upper bound
    when it also waits for the camera)."""

    def __init__(self, bound: float, alpha: float = 0.05, frac_alpha: float = 0.02) -> None:
        self.bound = bound
        self.alpha, self.frac_alpha = alpha, frac_alpha
        self.alone: float | None = None
        self.overlap: float | None = None
        self.frac = 0.0
        self.alone_frames = 0

    def on_live(self, latency_s: float, overlapped: bool) -> None:
        self.frac += self.frac_alpha * ((1.0 if overlapped else 0.0) - self.frac)
        if overlapped:
            self.overlap = latency_s if self.overlap is None else self.overlap + self.alpha * (latency_s - self.overlap)
        else:
            self.alone_frames += 1
            self.alone = latency_s if self.alone is None else self.alone + self.alpha * (latency_s - self.alone)

    def loss(self) -> float | None:
        if self.alone is None or self.overlap is None or self.alone_frames < _MIN_BASELINE or self.alone <= 0:
            return None
        return self.frac * max(0.0, self.overlap / self.alone - 1.0)

    def allows(self) -> bool:
        loss = self.loss()
        return loss is None or loss <= self.bound


@dataclass
class ShadowCounters:
    live_frames: int = 0  # live frames offered
    shadow_frames: int = 0  # frames the candidate ran (errors included)
    errors: int = 0
    skipped_budget: int = 0
    skipped_busy: int = 0


@dataclass(frozen=True)
class ShadowSnapshot:
    """What a report needs, read under the runner's lock."""

    agreement: Agreement
    candidate_latency: LatencyStats
    live_latency: LatencyStats
    counters: ShadowCounters
    window_s: float
    rate_hz: float | None
    live_slowdown: float | None
    done: bool


class ShadowRunner:
    """Owns the candidate engine from start() to close(); close() frees its interpreter."""

    def __init__(self, candidate: EngineLike, sampling: ShadowSampling, iou_threshold: float = 0.5,
                 max_frames: int | None = None, duration_s: float | None = None,
                 on_done: Callable[[], None] | None = None,
                 on_compared: Sequence[Compared] = ()) -> None:
        self.candidate = candidate
        self.sampling = sampling
        self.max_frames, self.duration_s = max_frames, duration_s
        self.on_done = on_done
        self.on_compared = list(on_compared)  # (live frame, live detections, candidate's): hard-example capture
        self.window = AgreementWindow(iou_threshold)
        self.budget = LiveBudget(sampling.max_live_slowdown)
        self.counters = ShadowCounters()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._job: tuple[FrameResult, list[Detection]] | None = None
        self._busy = False
        self._finished_seq = 0  # shadow frames finished; a live frame overlapped one if this moved
        self._seen_seq = 0
        self._next_due = 0.0
        self._stop = False
        self.done = False
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)

    def start(self) -> ShadowRunner:
        self.started = time.monotonic()
        self._thread.start()
        return self

    # ------------------------------------------------------------------------------------------ live side

    def offer(self, result: FrameResult, detections: list[Detection]) -> None:
        """The pipeline's shadow hook (inference thread): bookkeeping and at most a hand-over, never waits."""
        with self._lock:
            overlapped = self._busy or self._finished_seq != self._seen_seq
            self._seen_seq = self._finished_seq
            if result.stats.error is not None or self.done or self._stop:
                return
            self.budget.on_live(result.latency_s, overlapped)
            c = self.counters
            c.live_frames += 1
            now = time.monotonic()
            if c.live_frames % self.sampling.every_nth or now < self._next_due:
                return
            if self._busy:
                c.skipped_busy += 1
                return
            if not self.budget.allows():
                c.skipped_budget += 1
                self._next_due = now + 1.0 / self.sampling.max_rate_hz  # back off one period, then look again
                return
            self._next_due = now + 1.0 / self.sampling.max_rate_hz
            self._busy = True
            self._job = (result, list(detections))
            self._work.notify()

    # ------------------------------------------------------------------------------------------ shadow side

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._work.wait_for(lambda: self._job is not None or self._stop)
                if self._stop:
                    return
                job, self._job = self._job, None
            assert job is not None
            self._run(*job)

    def _run(self, result: FrameResult, live: list[Detection]) -> None:
        dets: list[Detection] | None = None
        latency: float | None = None
        live_latency_s = result.latency_s
        try:
            dets, st = self.candidate.infer_timed(result.frame.image)
            latency = st.preprocess_s + st.invoke_s + st.postprocess_s
        except Exception as exc:  # a broken candidate is counted and reported, never fatal
            if self.counters.errors in (0, 9, 99):
                log.warning("shadow candidate failed on a frame: %s: %s", type(exc).__name__, exc)
        finished = False
        with self._lock:
            self.counters.shadow_frames += 1
            if dets is None:
                self.counters.errors += 1
            else:
                self.window.add(live, dets, latency, live_latency_s)
            self._busy = False
            self._finished_seq += 1
            if not self.done and self._reached_end():
                self.done = finished = True
        if dets is not None:
            for fn in self.on_compared:
                try:
                    fn(result, live, dets)
                except Exception:  # an observer's failure never stops the comparison
                    log.exception("shadow: a comparison observer failed")
        if finished and self.on_done is not None:
            self.on_done()

    def _reached_end(self) -> bool:
        if self.max_frames is not None and self.window.frames >= self.max_frames:
            return True
        return self.duration_s is not None and time.monotonic() - self.started >= self.duration_s

    # ------------------------------------------------------------------------------------------ reading, closing

    def snapshot(self) -> ShadowSnapshot:
        with self._lock:
            if not self.done and self.duration_s is not None and self._reached_end():
                self.done = True  # a run whose frames stopped coming still ends on time
            window_s = time.monotonic() - self.started
            c = ShadowCounters(**self.counters.__dict__)
            rate = c.shadow_frames / window_s if window_s > 0 else None
            return ShadowSnapshot(self.window.summary(), latency_stats(list(self.window.candidate_latency)),
                                  latency_stats(list(self.window.live_latency)), c, window_s, rate,
                                  self.budget.loss(), self.done)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (after the frame it runs, if any) and close the candidate engine."""
        with self._lock:
            self._stop = True
            self._work.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.candidate.close()

    @property
    def closed(self) -> bool:
        return self._stop and not self._thread.is_alive()

    def describe(self) -> dict[str, Any]:
        return {"candidate": self.candidate.model_name, "version": self.candidate.model_version,
                "done": self.done, **self.counters.__dict__}


__all__ = ["CandidateConfig", "LiveBudget", "ShadowCounters", "ShadowRunner", "ShadowSnapshot", "candidate_config"]
