"""Camera sources (OpenCV: RTSP, USB, video file, image directory; picamera2) and the capture thread.

The capture thread keeps only the freshest frame: a frame nobody took before the next one arrived is
dropped and counted. A *session* (open + read loop) runs in its own thread so a VideoCapture that hangs
in open() or read() — it does, on RTSP — cannot hang the agent: the supervisor abandons a session that
does not open within `open_timeout_s` or stops delivering for `read_timeout_s` (a stall), and reconnects
with exponential backoff and jitter. Nothing here ever raises out of the thread: a camera that goes away
is a reconnect loop until it comes back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.config import CameraConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class CameraState(StrEnum):
    STARTING = "starting"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # a non-looping file or directory reached its end
    STOPPED = "stopped"


class SourceError(Exception):
    """A source cannot be opened or read; the message goes into the camera's last_error."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8, HxWx3
    ts: float  # wall-clock capture time (seconds since the epoch)
    mono: float  # time.monotonic() at capture, for latencies
    index: int  # frames captured since start (monotonic, counts dropped frames too)


# ------------------------------------------------------------------------------------------------ sources


class FrameSource(ABC):
    """One connection to a camera. open() and read() may block; the Camera guards them with timeouts."""

    description: str = "source"

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> np.ndarray | None:
        """The next BGR frame; None at the end of a non-looping source. Raises SourceError on failure."""

    def close(self) -> None:  # noqa: B027 - optional for sources holding nothing
        pass


class OpenCvSource(FrameSource):
    """RTSP/HTTP streams, USB cameras (/dev/videoN or an index) and video files through cv2.VideoCapture."""

    def __init__(self, cfg: CameraConfig, kind: str) -> None:
        self.cfg = cfg
        self.kind = kind
        self.description = f"{kind}:{_redact(cfg.source)}"
        self._cap: Any = None
        self._pace_t0 = 0.0
        self._pace_n = 0
        self._fps = 0.0

    def _make_capture(self) -> Any:
        src = self.cfg.source
        if self.kind == "rtsp":
            # FFmpeg reads its options from the environment; TCP avoids UDP's smeared frames on Wi-Fi.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", f"rtsp_transport;{self.cfg.rtsp_transport}")
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cfg.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.read_timeout_s * 1000),
            ]
            return cv2.VideoCapture(src, cv2.CAP_FFMPEG, params)
        if self.kind == "usb":
            if src.isdigit():
                return cv2.VideoCapture(int(src), cv2.CAP_V4L2)
            if not Path(src).exists():
                raise SourceError(f"{src} does not exist (camera unplugged?)")
            return cv2.VideoCapture(src, cv2.CAP_V4L2)
        # video file
        if not Path(src).is_file():
            raise SourceError(f"video file {src} does not exist")
        return cv2.VideoCapture(src)

    def open(self) -> None:
        cap = self._make_capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.description}")
        if self.cfg.width and self.cfg.height and self.kind == "usb":
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = self.cfg.fps or (fps if 0 < fps < 1000 else 25.0)
        self._pace_t0, self._pace_n = time.monotonic(), 0

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError("read before open")
        ok, img = self._cap.read()
        if not ok or img is None:
            if self.kind != "file":
                raise SourceError(f"{self.description}: stream closed or device gone")
            if not self.cfg.loop:
                return None
            # Loop by reopening the path (not seeking), so a deleted or replaced file is noticed.
            self._cap.release()
            self._cap = None
            self.open()
            ok, img = self._cap.read()
            if not ok or img is None:
                raise SourceError(f"{self.description}: no frames after reopening")
        if self.kind == "file" and self.cfg.realtime:
            self._pace()
        return np.ascontiguousarray(img)

    def _pace(self) -> None:
        # Play files at their own rate, like a camera; catch up rather than drift after a slow frame.
        self._pace_n += 1
        due = self._pace_t0 + self._pace_n / self._fps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:
            self._pace_t0, self._pace_n = time.monotonic(), 0

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageDirSource(FrameSource):
    """Every image in a directory, in name order, at `fps` (default 5) when realtime."""

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.description = f"images:{cfg.source}"
        self._files: list[Path] = []
        self._i = 0
        self._next = 0.0

    def open(self) -> None:
        d = Path(self.cfg.source)
        if not d.is_dir():
            raise SourceError(f"image directory {d} does not exist")
        self._files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"no images in {d}")
        self._i = 0
        self._next = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._i >= len(self._files):
            if not self.cfg.loop:
                return None
            self.open()
        path = self._files[self._i]
        self._i += 1
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SourceError(f"cannot read image {path}")
        if self.cfg.realtime:
            self._next += 1.0 / (self.cfg.fps or 5.0)
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self._next = time.monotonic()
        return img


class Picamera2Source(FrameSource):
    """The Raspberry Pi camera through picamera2 (only when importable; apt python3-picamera2)."""

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.description = "picamera2"
        self._cam: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as exc:
            raise SourceError("picamera2 is not installed (apt install python3-picamera2)") from exc
        try:
            cam = Picamera2()
            size = (self.cfg.width or 1280, self.cfg.height or 720)
            # libcamera's "RGB888" is B,G,R in memory: exactly OpenCV's BGR.
            cam.configure(cam.create_video_configuration(main={"size": size, "format": "RGB888"}))
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError/IndexError when no camera is attached
            raise SourceError(f"picamera2: {exc}") from exc
        self._cam = cam

    def read(self) -> np.ndarray | None:
        try:
            return np.ascontiguousarray(self._cam.capture_array("main")[:, :, :3])
        except Exception as exc:
            raise SourceError(f"picamera2 read failed: {exc}") from exc

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:
                pass
            self._cam = None


def make_source(cfg: CameraConfig) -> FrameSource:
    kind = cfg.resolved_kind()
    if kind == "images":
        return ImageDirSource(cfg)
    if kind == "picamera2":
        return Picamera2Source(cfg)
    return OpenCvSource(cfg, kind)


def _redact(src: str) -> str:
    """Hide credentials in rtsp://user:pass@host URLs before they reach logs and MQTT."""
    if "://" in src and "@" in src:
        scheme, rest = src.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return src


# ------------------------------------------------------------------------------------------------ camera


class LatestFrame:
    """A one-frame slot: put() replaces, get() waits for a frame not yet taken. Overwritten frames count
    as dropped: the consumer always sees the freshest frame, never a backlog."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._taken = True
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if not self._taken:
                self.dropped += 1
            self._frame, self._taken = frame, False
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            if self._taken and not self._cond.wait_for(lambda: not self._taken, timeout):
                return None
            self._taken = True
            return self._frame


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
        self._gen = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random(seed)
        self.description = f"{cfg.resolved_kind()}:{_redact(cfg.source)}"

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
        self._index += 1
        self.frames += 1
        self.slot.put(Frame(img, time.time(), time.monotonic(), self._index))

    def _supervise(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self.state = CameraState.CONNECTING if attempt == 0 else CameraState.RECONNECTING
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
            self.state = CameraState.RECONNECTING
            delay = self.backoff_delay(attempt)
            attempt += 1
            log.warning("camera %s: %s; reconnect in %.1f s", self.description, self.last_error, delay)
            self._stop.wait(delay)
        self.state = CameraState.STOPPED

    def _watch(self, s: _Session) -> None:
        """Wait for the session to end, or abandon it on open timeout or stall."""
        t0 = time.monotonic()
        while not self._stop.is_set():
            if s.done.wait(0.05):
                if s.error:
                    self.last_error = s.error
                return
            now = time.monotonic()
            if not s.opened.is_set():
                if now - t0 > self.cfg.open_timeout_s:
                    self.last_error = f"open timed out after {self.cfg.open_timeout_s:g} s"
                    self._gen += 1  # abandon: the thread exits whenever its call returns
                    return
                continue
            if now - s.last_frame > self.cfg.read_timeout_s:
                self.stalls += 1
                self.state = CameraState.STALLED
                self.last_error = f"no frame for {self.cfg.read_timeout_s:g} s (stalled)"
                self._gen += 1
                return
