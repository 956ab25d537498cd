"""RTSP/HTTP streams, USB cameras and video files through cv2.VideoCapture."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.camera.config import CameraConfig
from agent.camera.source import FrameSource, SourceError, redact


class OpenCvSource(FrameSource):
    """RTSP/HTTP streams, USB cameras (/dev/videoN or an index) and video files through cv2.VideoCapture."""

    def __init__(self, cfg: CameraConfig, kind: str) -> None:
        self.cfg = cfg
        self.kind = kind
        self.description = f"{kind}:{redact(cfg.source)}"
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
