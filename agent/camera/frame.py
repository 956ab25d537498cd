"""What the capture thread hands over: the frame record, the camera's state, and the one-frame slot that
keeps only the freshest frame."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class CameraState(StrEnum):
    STARTING = "starting"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # a non-looping file or directory reached its end
    STOPPED = "stopped"


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8, HxWx3
    ts: float  # wall-clock capture time (seconds since the epoch)
    mono: float  # time.monotonic() at capture, for latencies
    index: int  # frames captured since start (monotonic, counts dropped frames too)


class LatestFrame:
    """A one-frame slot: put() replaces, get() waits for a frame not yet taken. Overwritten frames count
    as dropped: the consumer always sees the freshest frame, never a backlog."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._taken = True
        self.dropped = 0
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call `fn` (outside this slot's lock) after every put: a scheduler watching several slots."""
        self._listeners.append(fn)

    @property
    def ready(self) -> bool:
        """A frame is waiting that nobody took yet."""
        return not self._taken

    def put(self, frame: Frame) -> None:
        with self._cond:
            if not self._taken:
                self.dropped += 1
            self._frame, self._taken = frame, False
            self._cond.notify_all()
        for fn in self._listeners:
            fn()

    def get(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            if self._taken and not self._cond.wait_for(lambda: not self._taken, timeout):
                return None
            self._taken = True
            return self._frame
