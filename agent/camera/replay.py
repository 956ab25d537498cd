"""A stand-in camera for benchmarks and tests: frames held in memory, replayed in a loop at a fixed rate,
optionally stalling (read() blocks, as a hung RTSP read does) after a number of frames. No decoding, so a
benchmark measures the agent, not the video codec."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from agent.camera.source import FrameSource, SourceError


class ReplaySource(FrameSource):
    def __init__(self, frames: Sequence[np.ndarray], fps: float, stall_after: int | None = None,
                 release: threading.Event | None = None) -> None:
        if not frames:
            raise SourceError("nothing to replay")
        self.frames = list(frames)
        self.fps = fps
        self.stall_after = stall_after
        self.release = release or threading.Event()  # set it to end a stall (the read then returns None)
        self.description = f"replay:{len(self.frames)}@{fps:g}"
        self._i = 0
        self._next = 0.0

    def open(self) -> None:
        self._next = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self.stall_after is not None and self._i >= self.stall_after:
            self.release.wait()
            return None
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        img = self.frames[self._i % len(self.frames)]
        self._i += 1
        return img
