"""[camera] section: where frames come from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CameraConfig(BaseModel):
    """Where frames come from. `source`: rtsp://…, /dev/videoN, a USB index, a video file,
    an image directory, or "picamera2". `kind` "auto" guesses from the source."""

    model_config = ConfigDict(extra="forbid")

    source: str = "/dev/video0"
    kind: Literal["auto", "rtsp", "usb", "file", "images", "picamera2"] = "auto"
    loop: bool = Field(default=True, description="video files and image directories start over at the end")
    realtime: bool = Field(default=True, description="pace files and image directories at `fps`/their own rate")
    fps: float | None = Field(default=None, gt=0, description="pacing for image directories; files use their own")
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)
    open_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0, description="no frame for this long = stalled, reconnect")
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    rtsp_transport: Literal["tcp", "udp"] = "tcp"

    def resolved_kind(self) -> Literal["rtsp", "usb", "file", "images", "picamera2"]:
        if self.kind != "auto":
            return self.kind
        s = self.source
        if s.startswith(("rtsp://", "rtsps://", "http://", "https://", "rtmp://")):
            return "rtsp"
        if s == "picamera2":
            return "picamera2"
        if s.isdigit() or s.startswith("/dev/video"):
            return "usb"
        if Path(s).is_dir():
            return "images"
        return "file"
