"""The frame pipeline: capture thread → inference thread → publisher thread.

- Capture (agent.camera.capture.Camera) keeps only the freshest frame; stale ones are dropped and counted.
- Inference takes the freshest frame, runs the Engine (letterbox straight into the input tensor, invoke,
  decode), paces itself to `target_fps` if set, and calls the per-frame hooks. A failing frame is counted
  and reported, never fatal.
- Publishing (MQTT, JPEG encoding) runs on its own thread behind a small queue so a slow broker or
  encoder never delays the next invoke.
- swap_engine() replaces the model between two frames: the frame after the swap runs on the new engine,
  none is skipped, nothing restarts (the OTA updater's hot-swap point).

Hooks for other parts of the agent (all run on the inference thread; keep them short, never block):
  add_frame_hook(fn(FrameResult))  every inferred frame: stats, detections, errors (telemetry, OTA trial)
  add_tick_hook(fn())              every loop turn, frames or not (systemd WATCHDOG pings)
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from agent.camera.capture import Camera
from agent.camera.frame import Frame
from agent.inference.config import DetectConfig, PublishConfig
from agent.inference.frames import EngineLike, FrameResult, FrameStats
from agent.protocol.messages import Detection, DetectionsMessage
from agent.protocol.topics import Topics

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


class Pipeline:
    def __init__(
        self,
        camera: Camera,
        engine: EngineLike | None,
        detect: DetectConfig | None = None,
        sink: FrameHook | None = None,
        publish_queue: int = 4,
    ) -> None:
        self.camera = camera
        self._engine = engine
        self.detect = detect or DetectConfig()
        self._sink = sink
        self.counters = PipelineCounters()
        self.last_stats: FrameStats | None = None
        self._frame_hooks: list[FrameHook] = []
        self._tick_hooks: list[TickHook] = []
        self._swap_lock = threading.Lock()
        self._pending: EngineLike | None = None
        self._has_pending = False  # _pending may legitimately be None (unload)
        self._swapped_out: EngineLike | None = None
        self._swapped = threading.Condition()
        self._swap_seq = 0
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

    def start(self) -> Pipeline:
        if self.running:
            return self
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._infer_loop, name="inference", daemon=True),
            threading.Thread(target=self._publish_loop, name="publisher", daemon=True),
        ]
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
                return self._swapped_out

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
            frame = self.camera.get(timeout=0.25)
            wait = time.perf_counter() - t0
            if frame is None:
                continue
            self._apply_swap()  # a swap requested while we waited still lands between two frames
            if self.detect.target_fps:
                next_due = time.monotonic() + 1.0 / self.detect.target_fps
            engine = self._engine
            if engine is None:
                self.counters.no_model += 1
                continue
            self._run_one(engine, frame, wait)

    def _run_one(self, engine: EngineLike, frame: Frame, wait: float) -> None:
        error: str | None = None
        dets: list[Detection] = []
        pre = inv = post = 0.0
        try:
            dets, st = engine.infer_timed(frame.image)
            pre, inv, post = st.preprocess_s, st.invoke_s, st.postprocess_s
        except Exception as exc:  # one bad frame or a broken model must not stop the loop
            error = f"{type(exc).__name__}: {exc}"
            self.counters.errors += 1
            if self.counters.errors in (1, 10, 100) or self.counters.errors % 1000 == 0:
                log.warning("inference failed (%d so far): %s", self.counters.errors, error)
        self.counters.frames += 1
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
                             stats.backend, engine)
        for hook in list(self._frame_hooks):
            try:
                hook(result)
            except Exception:
                log.exception("frame hook %r failed", hook)
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


# ---------------------------------------------------------------------------------------------- publishing


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool: ...


@dataclass
class PublishCounters:
    messages: int = 0
    rate_limited: int = 0
    snapshots: int = 0
    failed: int = 0


@dataclass
class DetectionPublisher:
    """Turns FrameResults into DetectionsMessages on the detections topic, at most `max_rate_hz`,
    plus an optional JPEG snapshot on detection. Runs on the publisher thread."""

    client: Publisher
    topics: Topics
    node_id: str
    cfg: PublishConfig = field(default_factory=PublishConfig)
    counters: PublishCounters = field(default_factory=PublishCounters)
    _last_pub: float = -1e9
    _last_snap: float = -1e9
    _had_detections: bool = False

    def __call__(self, result: FrameResult) -> None:
        now = time.monotonic()
        has = bool(result.detections)
        # An empty message when objects leave the scene, so subscribers can clear their view.
        cleared = self._had_detections and not has
        if not has and not self.cfg.publish_empty and not cleared:
            return
        if now - self._last_pub < 1.0 / self.cfg.max_rate_hz and not cleared:
            self.counters.rate_limited += 1
            return
        msg = DetectionsMessage(
            node=self.node_id,
            frame_ts=result.frame.ts,
            frame_index=result.frame.index,
            model_name=result.model_name or "",
            model_version=result.model_version or 0,
            backend=result.backend or "",
            detections=result.detections,
        )
        if self.client.publish(self.topics.detections(self.node_id), msg.model_dump_json()):
            self.counters.messages += 1
        else:
            self.counters.failed += 1
        self._last_pub = now
        self._had_detections = has
        if has and self.cfg.snapshot and now - self._last_snap >= self.cfg.snapshot_interval_s:
            jpeg = encode_snapshot(result.frame.image, self.cfg.snapshot_max_width, self.cfg.snapshot_quality)
            if jpeg is not None and self.client.publish(self.topics.snapshot(self.node_id), jpeg):
                self.counters.snapshots += 1
                self._last_snap = now


def encode_snapshot(image: np.ndarray, max_width: int, quality: int) -> bytes | None:
    h, w = image.shape[:2]
    if w > max_width:
        image = cv2.resize(image, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return buf.tobytes() if ok else None
