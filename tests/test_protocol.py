"""Topic tree and payload models."""

from __future__ import annotations

import base64

import pytest

from agent.protocol import (
    Announcement,
    DetectionsMessage,
    NodeState,
    Target,
    Topics,
    UpdateState,
    UpdateStatus,
)


def test_topic_tree() -> None:
    t = Topics("fleet")
    assert t.availability("cam-1") == "fleet/node/cam-1/availability"
    assert t.announce(Target()) == "fleet/announce/all"
    assert t.announce(Target.parse("group:yard")) == "fleet/announce/group/yard"
    assert set(t.announce_subscriptions("cam-1", ["yard"])) == {
        "fleet/announce/all", "fleet/announce/node/cam-1", "fleet/announce/group/yard"}
    assert t.parse_node_topic("fleet/node/cam-1/telemetry") == ("cam-1", "telemetry")
    assert t.parse_node_topic("other/node/cam-1/telemetry") is None


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "x" * 65, "sp ace"])
def test_node_ids_cannot_escape_their_subtree(bad: str) -> None:
    with pytest.raises(ValueError):
        Topics().state(bad)


def test_payload_roundtrip() -> None:
    msg = DetectionsMessage(node="n", frame_ts=1.5, frame_index=7, model_name="m", model_version=2, backend="cpu",
                            detections=[{"box": (0.1, 0.2, 0.3, 0.4), "class_id": 0, "class_name": "circle",
                                         "score": 0.9}])
    again = DetectionsMessage.model_validate_json(msg.model_dump_json())
    assert again == msg
    st = NodeState(node="n", status="running", agent_version="0.1.0",
                   last_update=UpdateStatus(node="n", state=UpdateState.COMMITTED, version=2))
    assert NodeState.model_validate_json(st.model_dump_json()).last_update.state == "committed"  # type: ignore[union-attr]


def test_detections_message_camera_is_optional() -> None:
    """Older agents send no `camera`; multi-camera agents name it. Both parse, either way round."""
    old = {"node": "n", "frame_ts": 1.0, "frame_index": 1, "model_name": "m", "model_version": 1, "backend": "cpu",
           "detections": []}
    assert DetectionsMessage.model_validate(old).camera is None
    new = DetectionsMessage.model_validate({**old, "camera": "front"})
    assert new.camera == "front"
    assert DetectionsMessage.model_validate_json(new.model_dump_json()) == new


def test_announcement_rejects_non_base64() -> None:
    a = Announcement(manifest_b64="@@@", key_id="k", signature_b64=base64.b64encode(b"x").decode(), base_url="http://x")
    with pytest.raises(ValueError):
        a.manifest_bytes()
