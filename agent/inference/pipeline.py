"""The frame pipeline: capture threads (one per camera) → inference loops → publisher thread.

- Capture (agent.camera.capture.Camera) keeps only the freshest frame; stale ones are dropped and counted.
- Each inference loop (`workers`: one per accelerator of a pool) takes the freshest frame of the camera
  that waited longest (agent.inference.scheduler), runs the Engine (letterbox straight into the input tensor, invoke,
  decode), filters the detections by that camera's settings and zones (agent.inference.feeds), paces itself
  to `target_fps` if set, and calls the per-frame hooks. A failing frame is counted
  and reported, never fatal.
- Publishing (MQTT, JPEG encoding) runs on its own thread behind a small queue so a slow broker or
  encoder never delays the next invoke.
- swap_engine() replaces the model between two frames: the frame after the swap runs on the new engine,
  none is skipped, nothing restarts (the OTA updater's hot-swap point). It returns once no loop still
  runs a frame on the old engine, so the caller may close it.

Hooks for other parts of the agent (all run on the inference thread; keep them short, never block):
  add_frame_hook(fn(FrameResult))  every inferred frame: stats, detections, errors (telemetry, OTA trial)
  add_tick_hook(fn())              every loop turn, frames or not (systemd WATCHDOG pings)
  set_shadow_hook(fn(FrameResult, engine detections))  after the frame hooks, with the engine's detections
                                   before any camera's filter and zones (agent.inference.shadow compares a
                                   candidate model with those); one at a time, None removes it
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.camera.capture import Camera
from agent.camera.frame import Frame
from agent.inference.config import DetectConfig
from agent.inference.feeds import Feed
from agent.inference.frames import EngineLike, FrameResult, FrameStats
from agent.inference.publisher import DetectionPublisher, PublishCounters, Publisher, encode_snapshot
from agent.inference.scheduler import FairScheduler
from agent.protocol.messages import Detection

__all__ = ["DetectionPublisher", "Feed", "Pipeline", "PipelineCounters", "PublishCounters", "Publisher",
           "encode_snapshot"]

log = logging.getLogger(__name__)


@dataclass
class PipelineCounters:
    frames: int = 0  # frames inferred (with or without error)
    errors: int = 0
    no_model: int = 0  # frames skipped because no model is loaded yet
    publish_dropped: int = 0  # results the publisher could not keep up with
    swaps: int = 0


FrameHook = Callable[[FrameResult], None]
TickHook = Callable[[], None]
ShadowHook = Callable[[FrameResult, list[Detection]], None]


class Pipeline:
    def __init__(
        self,
        camera: Camera | Sequence[Feed],
        engine: EngineLike | None,
        detect: DetectConfig | None = None,
        sink: FrameHook | None = None,
        publish_queue: int = 4,
        workers: int = 1,
    ) -> None:
        self.feeds = [Feed("default", camera)] if isinstance(camera, Camera) else list(camera)
        self.scheduler = FairScheduler(self.feeds)
        self.camera = self.feeds[0].camera  # the first (or only) camera
        self.workers = max(1, workers)
        self._engine = engine
        self.detect = detect or DetectConfig()
        self._sink = sink
        self.counters = PipelineCounters()
        self.last_stats: FrameStats | None = None
        self._frame_hooks: list[FrameHook] = []
        self._tick_hooks: list[TickHook] = []
        self._shadow_hook: ShadowHook | None = None
        self._swap_lock = threading.Lock()
        self._pending: EngineLike | None = None
        self._has_pending = False  # _pending may legitimately be None (unload)
        self._swapped_out: EngineLike | None = None
        self._swapped = threading.Condition()
        self._swap_seq = 0
        self._inflight: dict[int, int] = {}  # id(engine) → loops running a frame on it (under _swapped)
        self._stop = threading.Event()
        self._outq: queue.Queue[FrameResult] = queue.Queue(maxsize=publish_queue)
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------ control

    @property
    def engine(self) -> EngineLike | None:
        return self._engine

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def add_frame_hook(self, hook: FrameHook) -> None:
        self._frame_hooks.append(hook)

    def remove_frame_hook(self, hook: FrameHook) -> None:
        if hook in self._frame_hooks:
            self._frame_hooks.remove(hook)

    def add_tick_hook(self, hook: TickHook) -> None:
        self._tick_hooks.append(hook)

    def set_shadow_hook(self, hook: ShadowHook | None) -> None:
        self._shadow_hook = hook

    def start(self) -> Pipeline:
        if self.running:
            return self
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._infer_loop, name=f"inference-{i}" if i else "inference", daemon=True)
            for i in range(self.workers)
        ]
        self._threads.append(threading.Thread(target=self._publish_loop, name="publisher", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def swap_engine(self, new: EngineLike | None, timeout: float = 30.0) -> EngineLike | None:
        """Make `new` the engine for the next frame and return the previous one (not closed: the caller
        decides, e.g. keeps it for a rollback). Waits until the inference thread has switched, which
        happens between two frames; without a running pipeline the switch is immediate."""
        with self._swap_lock:
            if not self.running:
                old, self._engine = self._engine, new
                self.counters.swaps += 1
                return old
            with self._swapped:
                seq = self._swap_seq
                self._pending = new
                self._has_pending = True
                if not self._swapped.wait_for(lambda: self._swap_seq != seq or not self.running, timeout):
                    raise TimeoutError("the inference thread did not take the new engine in time")
                if self._swap_seq == seq:  # pipeline stopped meanwhile: switch directly
                    self._has_pending = False
                    old, self._engine = self._engine, new
                    self.counters.swaps += 1
                    return old
                old = self._swapped_out
                # other loops may still be inside a frame on the old engine: let them finish it
                self._swapped.wait_for(lambda: not self._inflight.get(id(old)), timeout)
                return old

    def _apply_swap(self) -> None:
        with self._swapped:
            if not self._has_pending:
                return
            self._swapped_out, self._engine = self._engine, self._pending
            self._pending = None
            self._has_pending = False
            self._swap_seq += 1
            self.counters.swaps += 1
            self._swapped.notify_all()

    # ------------------------------------------------------------------------------------------ threads

    def _infer_loop(self) -> None:
        next_due = 0.0
        while not self._stop.is_set():
            self._apply_swap()
            self._tick()
            if self.detect.target_fps:
                delay = next_due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            t0 = time.perf_counter()
            taken = self.scheduler.take(timeout=0.25)
            wait = time.perf_counter() - t0
            if taken is None:
                continue
            self._apply_swap()  # a swap requested while we waited still lands between two frames
            if self.detect.target_fps:
                next_due = time.monotonic() + 1.0 / self.detect.target_fps
            with self._swapped:
                engine = self._engine
                if engine is not None:
                    self._inflight[id(engine)] = self._inflight.get(id(engine), 0) + 1
            if engine is None:
                self.counters.no_model += 1
                continue
            try:
                self._run_one(engine, taken[0], taken[1], wait)
            finally:
                with self._swapped:
                    self._inflight[id(engine)] -= 1
                    if not self._inflight[id(engine)]:
                        del self._inflight[id(engine)]
                    self._swapped.notify_all()

    def _run_one(self, engine: EngineLike, feed: Feed, frame: Frame, wait: float) -> None:
        error: str | None = None
        dets: list[Detection] = []
        raw: list[Detection] = []
        pre = inv = post = 0.0
        device: str | None = None
        try:
            raw, st = engine.infer_timed(frame.image)
            pre, inv, post = st.preprocess_s, st.invoke_s, st.postprocess_s
            device = getattr(st, "device", None) or getattr(engine, "device", None)
            dets = feed.filter(raw)
        except Exception as exc:  # one bad frame or a broken model must not stop the loop
            error = f"{type(exc).__name__}: {exc}"
            self.counters.errors += 1
            if self.counters.errors in (1, 10, 100) or self.counters.errors % 1000 == 0:
                log.warning("inference failed (%d so far): %s", self.counters.errors, error)
        self.counters.frames += 1
        feed.record(len(dets), error is not None, device, pre + inv + post)
        stats = FrameStats(
            index=frame.index,
            frame_ts=frame.ts,
            capture_wait_s=wait,
            preprocess_s=pre,
            invoke_s=inv,
            postprocess_s=post,
            end_to_end_s=time.monotonic() - frame.mono,
            detections=len(dets),
            backend=getattr(engine, "backend_name", None),
            model_version=getattr(engine, "model_version", None),
            error=error,
        )
        self.last_stats = stats
        result = FrameResult(frame, dets, stats, getattr(engine, "model_name", None), stats.model_version,
                             stats.backend, engine, camera=feed.name, device=device)
        for hook in list(self._frame_hooks):
            try:
                hook(result)
            except Exception:
                log.exception("frame hook %r failed", hook)
        shadow = self._shadow_hook
        if shadow is not None:
            try:
                shadow(result, raw)
            except Exception:
                log.exception("shadow hook failed")
        if self._sink is not None and error is None:
            try:
                self._outq.put_nowait(result)
            except queue.Full:
                # Keep the newest: drop the oldest waiting result.
                with contextlib.suppress(queue.Empty):
                    self._outq.get_nowait()
                self.counters.publish_dropped += 1
                with contextlib.suppress(queue.Full):
                    self._outq.put_nowait(result)

    def _tick(self) -> None:
        for hook in self._tick_hooks:
            try:
                hook()
            except Exception:
                log.exception("tick hook %r failed", hook)

    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            try:
                result = self._outq.get(timeout=0.25)
            except queue.Empty:
                continue
            if self._sink is None:
                continue
            try:
                self._sink(result)
            except Exception:
                log.exception("publishing a result failed")
