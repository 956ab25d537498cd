"""Which FrameSource a CameraConfig names."""

from __future__ import annotations

from agent.camera.config import CameraConfig
from agent.camera.image_dir import ImageDirSource
from agent.camera.opencv_source import OpenCvSource
from agent.camera.picamera import Picamera2Source
from agent.camera.source import FrameSource


def make_source(cfg: CameraConfig) -> FrameSource:
    kind = cfg.resolved_kind()
    if kind == "images":
        return ImageDirSource(cfg)
    if kind == "picamera2":
        return Picamera2Source(cfg)
    return OpenCvSource(cfg, kind)
