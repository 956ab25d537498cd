"""The camera package's public names at their historical import path.

Camera sources (OpenCV: RTSP, USB, video file, image directory; picamera2) and the capture thread:
- frame.py: Frame, CameraState, LatestFrame (the freshest-frame slot)
- source.py: the FrameSource interface; opencv_source.py, image_dir.py, picamera.py: one module per kind;
  factory.py: make_source
- capture.py: Camera (sessions, stall detection, reconnect with backoff)
"""

from agent.camera.capture import Camera
from agent.camera.factory import make_source
from agent.camera.frame import CameraState, Frame, LatestFrame
from agent.camera.image_dir import IMAGE_SUFFIXES, ImageDirSource
from agent.camera.opencv_source import OpenCvSource
from agent.camera.picamera import Picamera2Source
from agent.camera.source import FrameSource, SourceError

__all__ = [
    "IMAGE_SUFFIXES",
    "Camera",
    "CameraState",
    "Frame",
    "FrameSource",
    "ImageDirSource",
    "LatestFrame",
    "OpenCvSource",
    "Picamera2Source",
    "SourceError",
    "make_source",
]
