"""The capture thread: supervises sessions against one source and keeps only the freshest frame.

A *session* (open + read loop) runs in its own thread so a VideoCapture that hangs in open() or read() —
it does, on RTSP — cannot hang the agent: the supervisor abandons a session that does not open within
`open_timeout_s` or stops delivering for `read_timeout_s` (a stall), and reconnects with exponential
backoff and jitter. Nothing here ever raises out of the thread: a camera that goes away is a reconnect
loop until it comes back. A frame nobody took before the next one arrived is dropped and counted.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import Any

import numpy as np

from agent.camera.config import CameraConfig
from agent.camera.factory import make_source
from agent.camera.frame import CameraState, Frame, LatestFrame
from agent.camera.source import FrameSource, SourceError, redact

log = logging.getLogger(__name__)


class _Session:
    """One open + read loop in its own daemon thread; abandoned (never joined) if it hangs."""

    def __init__(self, camera: Camera, source: FrameSource, gen: int) -> None:
        self.camera = camera
        self.source = source
        self.gen = gen
        self.opened = threading.Event()
        self.done = threading.Event()
        self.ended = False  # clean end of a non-looping source
        self.error: str | None = None
        self.frames = 0
        self.last_frame = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"camera-session-{gen}", daemon=True)

    def _run(self) -> None:
        try:
            self.source.open()
            self.last_frame = time.monotonic()
            self.opened.set()
            while self.camera._gen == self.gen and not self.camera._stop.is_set():
                img = self.source.read()
                if img is None:
                    self.ended = True
                    break
                if self.camera._gen != self.gen:
                    break  # abandoned while blocked in read(): the frame is stale, drop it quietly
                self.last_frame = time.monotonic()
                self.frames += 1
                self.camera._deliver(img)
        except SourceError as exc:
            self.error = str(exc)
        except Exception as exc:  # OpenCV raises cv2.error and friends; never let the thread die silently
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                self.source.close()
            self.done.set()


class Camera:
    """Supervises sessions against one source; exposes the freshest frame and the camera's health."""

    def __init__(self, cfg: CameraConfig, source_factory: Any = None, seed: int | None = None) -> None:
        self.cfg = cfg
        self._factory = source_factory or (lambda: make_source(cfg))
        self.slot = LatestFrame()
        self.state = CameraState.STARTING
        self.last_error: str | None = None
        self.reconnects = 0
        self.stalls = 0
        self.frames = 0
        self._index = 0
        self._stalled = False  # the last session stalled: report `stalled` until a frame comes, not `reconnecting`
        self._gen = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random(seed)
        self.description = f"{cfg.resolved_kind()}:{redact(cfg.source)}"

    # -------------------------------------------------------------------------------------------- public

    def start(self) -> Camera:
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name="camera", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._gen += 1
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = CameraState.STOPPED

    def get(self, timeout: float | None = None) -> Frame | None:
        """The freshest frame not yet taken, waiting up to `timeout` seconds; None if none came."""
        return self.slot.get(timeout)

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "source": self.description,
            "frames": self.frames,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "stalls": self.stalls,
            "last_error": self.last_error,
        }

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff capped at backoff_max_s, with "equal jitter" (half fixed, half random)
        so a fleet whose RTSP server restarts does not reconnect in lockstep."""
        d = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * (2 ** min(attempt, 30)))
        return d / 2 + self._rng.uniform(0, d / 2)

    # -------------------------------------------------------------------------------------------- internals

    def _deliver(self, img: np.ndarray) -> None:
        if self.state != CameraState.STREAMING:
            self.state = CameraState.STREAMING
            self.last_error = None
            self._stalled = False
        self._index += 1
        self.frames += 1
        self.slot.put(Frame(img, time.time(), time.monotonic(), self._index))

    def _supervise(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self.state = self._retry_state(attempt)
            self._gen += 1
            try:
                source = self._factory()
            except Exception as exc:
                self.last_error = f"bad camera source: {exc}"
                source = None
            if source is not None:
                session = _Session(self, source, self._gen)
                session.thread.start()
                self._watch(session)
                if session.frames:
                    attempt = 0
                if session.ended and not session.error:
                    self.state = CameraState.ENDED
                    log.info("camera %s: end of source", self.description)
                    self._stop.wait()
                    break
            if self._stop.is_set():
                break
            self.reconnects += 1
            self.state = self._retry_state(1)
            delay = self.backoff_delay(attempt)
            attempt += 1
            log.warning("camera %s: %s; reconnect in %.1f s", self.description, self.last_error, delay)
            self._stop.wait(delay)
        self.state = CameraState.STOPPED

    def _retry_state(self, attempt: int) -> CameraState:
        if self._stalled:
            return CameraState.STALLED
        return CameraState.CONNECTING if attempt == 0 else CameraState.RECONNECTING

    def _watch(self, s: _Session) -> None:
        """Wait for the session to end, or abandon it on open timeout or stall."""
        t0 = time.monotonic()
        while not self._stop.is_set():
            if s.done.wait(0.05):
                if s.error:
                    self.last_error = s.error
                    self._stalled = False
                return
            now = time.monotonic()
            if not s.opened.is_set():
                if now - t0 > self.cfg.open_timeout_s:
                    self.last_error = f"open timed out after {self.cfg.open_timeout_s:g} s"
                    self._stalled = False
                    self._gen += 1  # abandon: the thread exits whenever its call returns
                    return
                continue
            if now - s.last_frame > self.cfg.read_timeout_s:
                self.stalls += 1
                self.state = CameraState.STALLED
                self._stalled = True
                self.last_error = f"no frame for {self.cfg.read_timeout_s:g} s (stalled)"
                self._gen += 1
                return
