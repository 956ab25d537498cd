"""The frame hook: decide whether a frame is a hard example, rate-limit, hand it to the ring's writer.

`observe` runs on the inference thread, so it only decides (pure numpy on the detections) and queues; JPEG
encoding and the fsynced writes happen on the `capture-writer` thread. A full queue drops the frame
(counted): capture never slows inference.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.capture.config import CaptureConfig
from agent.capture.meta import CaptureMeta
from agent.capture.reasons import close_classes, in_band, top_score
from agent.capture.reference import DriftMonitor, ReferenceError, ScoreReference, load_reference
from agent.capture.ring import CaptureRing, RingError
from agent.capture.uploader import Uploader, read_token
from agent.inference.config import engine_detect
from agent.inference.frames import FrameResult
from agent.updates.intake import RejectLimiter

log = logging.getLogger(__name__)
SEEN_FRAMES = 256  # frames remembered so the shadow's second look at a frame neither recounts nor re-keeps it


@dataclass
class CaptureCounters:
    observed: int = 0
    hard: int = 0  # frames with at least one reason
    rate_limited: int = 0
    queue_full: int = 0
    written: int = 0
    failed: int = 0


def frame_id(ts: float) -> str:
    return f"{int(ts * 1e9):019d}-{secrets.token_hex(4)}"


class CaptureSink:
    def __init__(self, cfg: CaptureConfig, ring: CaptureRing, node: str, score_floor: float = 0.0,
                 uploader: Uploader | None = None, queue_size: int = 4) -> None:
        self.cfg, self.ring, self.node, self.uploader = cfg, ring, node, uploader
        self.score_floor = score_floor
        self.bucket = RejectLimiter(burst=cfg.burst, every_s=60.0 / cfg.rate_per_min)
        self.counters = CaptureCounters()
        self.drift: DriftMonitor | None = None
        self._model_key: tuple[Any, ...] | None = None
        self._q: queue.Queue[tuple[np.ndarray, CaptureMeta] | None] = queue.Queue(maxsize=queue_size)
        self._writer: threading.Thread | None = None
        self._seen: OrderedDict[tuple[str, int, float], bool] = OrderedDict()  # recent frames: kept?

    # ---- the reference --------------------------------------------------------------------------------
    def set_reference(self, ref: ScoreReference | None) -> None:
        self.drift = DriftMonitor(ref, self.cfg.drift_window, self.cfg.drift_threshold, self.score_floor) \
            if ref is not None else None

    def _follow_model(self, result: FrameResult) -> None:
        """A new model brings its own reference (read from its bundle directory, when it ships one)."""
        key = (result.model_name, result.model_version)
        if key == self._model_key:
            return
        self._model_key = key
        root = getattr(getattr(result.engine, "bundle", None), "root", None)
        if root is None:
            return
        try:
            self.set_reference(load_reference(Path(root)))
        except ReferenceError as exc:
            log.warning("capture: no drift check for %s v%s: %s", *key, exc)
            self.set_reference(None)

    # ---- the hook -------------------------------------------------------------------------------------
    def reasons(self, result: FrameResult, disagreement: float | None = None) -> tuple[list[str], float | None]:
        dets, cfg = result.detections, self.cfg
        why = []
        if in_band(dets, cfg.band):
            why.append("band")
        if close_classes(dets, cfg.close_iou, cfg.close_margin):
            why.append("close_classes")
        if disagreement is not None and disagreement >= cfg.disagreement:
            why.append("disagreement")
        drift = self.drift.update([d.score for d in dets]) if self.drift is not None else None
        if drift is not None:
            why.append("drift")
        return why, drift

    def _decide(self, result: FrameResult, camera: str, disagreement: float | None) -> tuple[list[str], float | None]:
        """The reasons; a frame seen before (the frame hook, then the shadow with its disagreement) is judged
        only on what is new, and never kept twice."""
        key = (camera, result.frame.index, result.frame.ts)
        if key not in self._seen:
            self._seen[key] = False
            while len(self._seen) > SEEN_FRAMES:
                self._seen.popitem(last=False)
            return self.reasons(result, disagreement)
        if self._seen[key] or disagreement is None or disagreement < self.cfg.disagreement:
            return [], None
        return ["disagreement"], None

    def observe(self, frame_bgr: np.ndarray, result: FrameResult, camera: str,
                disagreement: float | None = None) -> str | None:
        """Keep this frame if it is a hard example; the reasons joined by ',' or None."""
        self.counters.observed += 1
        if result.stats.error is not None or result.model_version is None:
            return None
        self._follow_model(result)
        why, drift = self._decide(result, camera, disagreement)
        if not why:
            return None
        self.counters.hard += 1
        if not self.bucket.allow()[0]:
            self.counters.rate_limited += 1
            return None
        h, w = frame_bgr.shape[:2]
        meta = CaptureMeta(
            id=frame_id(result.frame.ts), node=self.node, camera=camera, frame_ts=result.frame.ts,
            frame_index=result.frame.index, model_name=result.model_name or "", model_version=result.model_version,
            backend=result.backend or "", reasons=why, detections=list(result.detections), width=w, height=h,
            image_sha256="0" * 64, image_size=1, top_score=top_score(result.detections),
            disagreement=disagreement, drift=drift)
        try:
            self._q.put_nowait((frame_bgr, meta))
        except queue.Full:
            self.counters.queue_full += 1
            return None
        self._seen[(camera, result.frame.index, result.frame.ts)] = True
        self._ensure_writer()
        return ",".join(why)

    def __call__(self, result: FrameResult) -> None:
        """As a pipeline frame hook (no shadow: no disagreement value)."""
        self.observe(result.frame.image, result, result.camera)

    # ---- the writer -----------------------------------------------------------------------------------
    def _ensure_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        while (item := self._q.get()) is not None:
            try:
                self.write(*item)
            finally:
                self._q.task_done()
        self._q.task_done()

    def write(self, frame_bgr: np.ndarray, meta: CaptureMeta) -> None:
        ok, buf = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        try:
            if not ok:
                raise RingError("JPEG encoding failed")
            data = buf.tobytes()
            meta = meta.model_copy(update={"image_sha256": hashlib.sha256(data).hexdigest(),
                                           "image_size": len(data)})
            self.ring.put(meta, data)
            self.counters.written += 1
        except (OSError, RingError) as exc:
            self.counters.failed += 1
            log.warning("capture: frame %s not kept: %s", meta.id, exc)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued frame is on disk (tests, shutdown)."""
        end = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.01)
        return not self._q.unfinished_tasks

    def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._q.put(None)
            self._writer.join(timeout=10)
        if self.uploader is not None:
            self.uploader.stop()


def build_capture(cfg: Any) -> CaptureSink | None:
    """The sink for an AgentConfig (None when `[capture] enabled = false`), its uploader started if a
    collector is configured. The daemon adds it as a frame hook and subscribes the uploader.

    A ring directory that cannot be made disables capture, an unreadable credential disables uploads: both
    are logged, neither stops the agent (inference matters more than its hard examples)."""
    c: CaptureConfig = cfg.capture
    if not c.enabled:
        return None
    try:
        ring = CaptureRing(c.dir or Path(cfg.state_dir) / "capture", c.max_frames, c.max_bytes)
    except OSError as exc:
        log.error("capture disabled: cannot use the ring directory: %s", exc)
        return None
    uploader = None
    if c.collector_url and c.credential_file is not None:
        try:
            uploader = Uploader(ring, c.collector_url, cfg.node_id, read_token(c.credential_file), c.ca_file,
                                c.upload_timeout_s).start()
        except (OSError, ValueError) as exc:
            log.error("capture uploads disabled: collector credential %s: %s", c.credential_file, exc)
    floor = engine_detect(cfg.detect, cfg.camera_entries()).score_threshold
    return CaptureSink(c, ring, cfg.node_id, floor, uploader)
