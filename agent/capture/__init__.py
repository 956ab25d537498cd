"""Hard-example capture (issue 15): keep the frames the model is unsure about, upload them on request.

`reasons` decides (score band, close classes, shadow disagreement, score drift against the bundle's
reference), `ring` stores (bounded, on disk, survives restarts), `uploader` pushes to the builder's collector,
`sink` ties them to the pipeline's frame hook. docs/FLYWHEEL.md.
"""

from agent.capture.config import CaptureConfig
from agent.capture.sink import CaptureSink, build_capture
from agent.capture.uploader import Uploader

__all__ = ["CaptureConfig", "CaptureSink", "Uploader", "build_capture"]
