"""A directory of images played as a camera (demos, tests, replaying captured frames)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from agent.camera.config import CameraConfig
from agent.camera.source import FrameSource, SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


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
