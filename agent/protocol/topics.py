"""The MQTT topic tree (see docs/PROTOCOL.md).

    {prefix}/node/{node}/availability   retained  "online" | "offline" (LWT)
    {prefix}/node/{node}/state          retained  NodeState
    {prefix}/node/{node}/telemetry                Telemetry
    {prefix}/node/{node}/detections               DetectionsMessage (camera `default`; alias of the next)
    {prefix}/node/{node}/snapshot                 JPEG bytes (camera `default`)
    {prefix}/node/{node}/camera/{name}/detections DetectionsMessage of one camera
    {prefix}/node/{node}/camera/{name}/snapshot   JPEG bytes of one camera
    {prefix}/node/{node}/update         retained  UpdateStatus
    {prefix}/node/{node}/keyring        retained  KeyringStatus (version, last refusal)
    {prefix}/node/{node}/shadow         retained  ShadowRequest (a candidate to run beside the live model; empty: stop)
    {prefix}/node/{node}/shadow/report  retained  ShadowReport (agreement of the candidate with the live model)
    {prefix}/node/{node}/cmd                      CommandRequest (v5 response topic + correlation data)
    {prefix}/announce/all               retained  Announcement
    {prefix}/announce/group/{group}     retained  Announcement
    {prefix}/announce/node/{node}       retained  Announcement
    {prefix}/keyring                    retained  KeyringMessage (signed by the root key; nodes only read it)
    {prefix}/admin/{client}/replies/... CommandResponse (the only place a node answers a command)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.protocol.manifest import Target

_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_PREFIX = "edgefleet"


def check_segment(value: str, what: str = "topic segment") -> str:
    """Node ids, groups and prefixes become topic segments: refuse wildcards and separators."""
    if not _SEGMENT.match(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_', '.', '-' (max 64)")
    return value


@dataclass(frozen=True)
class Topics:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        for part in self.prefix.split("/"):
            check_segment(part, "topic prefix")

    def node(self, node: str, leaf: str) -> str:
        return f"{self.prefix}/node/{check_segment(node, 'node id')}/{leaf}"

    def availability(self, node: str) -> str:
        return self.node(node, "availability")

    def state(self, node: str) -> str:
        return self.node(node, "state")

    def telemetry(self, node: str) -> str:
        return self.node(node, "telemetry")

    def detections(self, node: str) -> str:
        return self.node(node, "detections")

    def snapshot(self, node: str) -> str:
        return self.node(node, "snapshot")

    def camera_detections(self, node: str, camera: str) -> str:
        return self.node(node, f"camera/{check_segment(camera, 'camera name')}/detections")

    def camera_snapshot(self, node: str, camera: str) -> str:
        return self.node(node, f"camera/{check_segment(camera, 'camera name')}/snapshot")

    def update(self, node: str) -> str:
        return self.node(node, "update")

    def shadow(self, node: str) -> str:
        """Retained: the node's shadow-run request (agent.protocol.shadow.ShadowRequest); empty = none."""
        return self.node(node, "shadow")

    def shadow_report(self, node: str) -> str:
        """Retained: the node's latest ShadowReport."""
        return self.node(node, "shadow/report")

    def capture_upload(self, node: str | None = None) -> str:
        """Retained: a request to upload captured hard examples, to one node or (None) to every node."""
        return self.node(node, "capture/upload") if node is not None else f"{self.prefix}/capture/upload"

    def capture_status(self, node: str) -> str:
        """Retained: the node's last upload round (agent.capture.uploader.UploadReport as JSON)."""
        return self.node(node, "capture/status")

    def command(self, node: str) -> str:
        return self.node(node, "cmd")

    def response(self, node: str) -> str:
        return self.node(node, "cmd/response")

    def keyring(self) -> str:
        return f"{self.prefix}/keyring"

    def keyring_status(self, node: str) -> str:
        """Retained: the keyring version a node runs and why it refused the last keyring message, if it did."""
        return self.node(node, "keyring")

    def admin_replies(self, client: str) -> str:
        """The reply subtree of one admin tool: it puts this (or a topic below it) in a command's Response Topic."""
        return f"{self.prefix}/admin/{check_segment(client, 'client id')}/replies"

    def is_reply_topic(self, topic: str, node: str) -> bool:
        """Where `node` may answer a command: its own cmd/response or under {prefix}/admin/{client}/replies."""
        if topic == self.response(node):
            return True
        head = f"{self.prefix}/admin/"
        if not topic.startswith(head) or len(topic) > 512:
            return False
        parts = topic[len(head):].split("/")
        return len(parts) >= 2 and parts[1] == "replies" and all(_SEGMENT.match(p) for p in parts)

    def announce(self, target: Target) -> str:
        if target.kind == "all":
            return f"{self.prefix}/announce/all"
        assert target.value is not None
        return f"{self.prefix}/announce/{target.kind}/{check_segment(target.value)}"

    def announce_subscriptions(self, node: str, groups: list[str]) -> list[str]:
        """The announce topics one node listens to."""
        subs = [self.announce(Target()), self.announce(Target(kind="node", value=node))]
        subs += [self.announce(Target(kind="group", value=g)) for g in groups]
        return subs

    def all_nodes(self, leaf: str) -> str:
        """Wildcard subscription for the dashboard: every node's `leaf`."""
        return f"{self.prefix}/node/+/{leaf}"

    def parse_node_topic(self, topic: str) -> tuple[str, str] | None:
        """Return (node, leaf) for a node topic under this prefix, else None."""
        head = f"{self.prefix}/node/"
        if not topic.startswith(head):
            return None
        node, _, leaf = topic[len(head):].partition("/")
        return (node, leaf) if node and leaf else None
