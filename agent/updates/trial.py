"""The trial of a freshly swapped-in model: its first frames in production decide commit or rollback.

The monitor reads the pipeline's own per-frame record (agent.inference.frames.FrameResult); the
service attaches the raw `outputs` only to frames of the engine on trial.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.inference.frames import FrameResult
from agent.updates.store import UpdatesConfig


@dataclass
class TrialMonitor:
    """Watches the frames of the engine on trial. `feed` runs on the inference thread: keep it cheap."""

    engine: object
    version: int
    cfg: UpdatesConfig
    baseline_ms: float | None
    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    errors: int = 0
    last_error: str | None = None
    nonfinite: int = 0
    constant: int = 0
    latencies: list[float] = field(default_factory=list)
    out_digests: set[bytes] = field(default_factory=set)
    in_digests: set[bytes] = field(default_factory=set)
    failure: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def matches(self, r: FrameResult) -> bool:
        """Was `r` inferred by the engine on trial (by identity; by model version when no engine is known)?"""
        return r.engine is self.engine if r.engine is not None else r.model_version == self.version

    def feed(self, r: FrameResult) -> None:
        if self.done.is_set():
            return
        self.frames += 1
        error = r.stats.error
        if error is not None:
            self.errors += 1
            self.last_error = error
            if self.errors > self.cfg.trial_max_error_frames:
                self._fail(f"inference error during trial: {error}")
                return
        else:
            self.latencies.append(r.latency_s * 1000)
        if r.outputs is not None:
            if not self._check_outputs(r.outputs):
                return
            if len(self.in_digests) < 2:
                # The frame the outputs came from: tells "the model ignores its input" from a still scene.
                self.in_digests.add(_digest([r.frame.image]))
        if self.clean >= self.cfg.trial_frames:
            self.done.set()

    @property
    def clean(self) -> int:
        """Frames the engine on trial inferred without error."""
        return self.frames - self.errors

    def _check_outputs(self, outputs: Sequence[np.ndarray]) -> bool:
        """Record one frame's raw outputs; False when they fail the trial outright (NaN/Inf)."""
        outs = [np.asarray(o) for o in outputs]
        if any(o.dtype.kind in "fc" and not np.all(np.isfinite(o)) for o in outs):
            self.nonfinite += 1
            self._fail(f"model produced NaN/Inf outputs on frame {self.frames} of its trial")
            return False
        if outs and all(o.size and o.min() == o.max() for o in outs):
            self.constant += 1
        self.out_digests.add(_digest(outs))
        return True

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self.done.set()

    def missing_evidence(self, waited_s: float) -> str | None:
        """Why the trial cannot pass for lack of frames (a dead camera, a stalled pipeline), or None.

        A trial never commits on time alone: without trial_frames clean frames nothing vouches for the model."""
        if self.clean >= self.cfg.trial_frames:
            return None
        if self.clean == 0:
            return f"no frames during trial: not committed (waited {waited_s:.0f} s)"
        return (f"only {self.clean} of {self.cfg.trial_frames} clean frames within {waited_s:.0f} s: "
                "not committed")

    def verdict(self) -> str | None:
        """None when the trial passed, else why it failed."""
        if self.failure:
            return self.failure
        n_ok = self.clean
        if n_ok >= 3 and self.constant == n_ok:
            return f"degenerate outputs: every output tensor constant on all {n_ok} trial frames"
        # The same outputs for every frame while the inputs changed: the model ignores its input.
        varied_inputs = len(self.in_digests) > 1 or not self.in_digests
        if n_ok >= 5 and len(self.out_digests) == 1 and varied_inputs:
            return f"degenerate outputs: identical on all {n_ok} trial frames although the frames differ"
        if self.baseline_ms and len(self.latencies) >= 5:
            med = statistics.median(self.latencies)
            bound = self.baseline_ms * self.cfg.trial_latency_factor + self.cfg.trial_latency_slack_ms
            if med > bound:
                return (f"latency regression: trial median {med:.1f} ms vs {self.baseline_ms:.1f} ms before "
                        f"(limit {bound:.1f} ms)")
        return None


def _digest(arrays: list[np.ndarray]) -> bytes:
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).data)
    return h.digest()


__all__ = ["TrialMonitor"]
