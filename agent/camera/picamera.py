"""The Raspberry Pi camera through picamera2 (apt python3-picamera2; imported only when used)."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.camera.config import CameraConfig
from agent.camera.source import FrameSource, SourceError


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
