"""Contracts shared by the builder and the agent: bundle manifest, MQTT topics and payloads.

Light on purpose (pydantic + stdlib only) so both the Pi and the workstation import it.
See docs/PROTOCOL.md.
"""

from agent.protocol.manifest import (
    SCHEMA_VERSION,
    FileEntry,
    GoldenTest,
    Manifest,
    ModelFiles,
    OutputLayout,
    Preprocess,
    Target,
    TensorSpec,
    VariantMetrics,
)
from agent.protocol.messages import (
    Announcement,
    Availability,
    CommandRequest,
    CommandResponse,
    Detection,
    DetectionsMessage,
    ModelRef,
    NodeState,
    UpdateState,
    UpdateStatus,
)
from agent.protocol.telemetry import Telemetry
from agent.protocol.topics import Topics

__all__ = [
    "SCHEMA_VERSION",
    "Announcement",
    "Availability",
    "CommandRequest",
    "CommandResponse",
    "Detection",
    "DetectionsMessage",
    "FileEntry",
    "GoldenTest",
    "Manifest",
    "ModelFiles",
    "ModelRef",
    "NodeState",
    "OutputLayout",
    "Preprocess",
    "Target",
    "Telemetry",
    "TensorSpec",
    "Topics",
    "UpdateState",
    "UpdateStatus",
    "VariantMetrics",
]
