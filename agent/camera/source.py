"""The interface of one connection to a camera; the kinds live beside it (opencv_source, image_dir,
picamera) and factory.make_source picks one for a CameraConfig."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class SourceError(Exception):
    """A source cannot be opened or read; the message goes into the camera's last_error."""


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


def redact(src: str) -> str:
    """Hide credentials in rtsp://user:pass@host URLs before they reach logs and MQTT."""
    if "://" in src and "@" in src:
        scheme, rest = src.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return src
