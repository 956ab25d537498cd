"""The dashboard's state model, telemetry reading, bundle listing and terminal table (no broker needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.protocol.manifest import Target
from agent.protocol.messages import (
    Detection,
    DetectionsMessage,
    ModelRef,
    NodeState,
    UpdateState,
    UpdateStatus,
)
from agent.protocol.telemetry import CameraTelemetry, PowerInfo, StageLatency, Telemetry, Temperatures
from agent.protocol.topics import Topics
from agent.security.signing import SigningKey
from builder.dashboard.bundles import find_bundles
from builder.dashboard.loadgen import sim_bundle
from builder.dashboard.state import FleetState, dumps
from builder.dashboard.table import changes, format_table
from builder.dashboard.telemetry_view import MalformedPayload, read_telemetry

T = Topics("fleet")


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def telemetry(node: str, p50: float = 4.0, watts: float | None = 3.9, estimated: bool = False) -> bytes:
    return Telemetry(
        node=node, ts=datetime.now(UTC), interval_s=1.0, agent_version="0.1.0", uptime_s=5.0, status="running",
        backend="edgetpu", model_name="shapes", model_version=3,
        latency={"invoke": StageLatency(count=30, p50_ms=p50, p95_ms=p50 * 1.5),
                 "end_to_end": StageLatency(count=30, p50_ms=p50 + 5, p95_ms=p50 + 9)},
        power=PowerInfo(source="estimated" if estimated else "hwmon:ina219", estimated=estimated, watts=watts),
        temperatures=Temperatures(cpu_c=51.5, tpu_max_c=44.0),
    ).model_dump_json().encode()


def state_msg(node: str, version: int, groups: list[str] | None = None) -> bytes:
    return NodeState(node=node, status="running", agent_version="0.1.0", backend="cpu",
                     model=ModelRef(name="shapes", version=version), groups=groups or []).model_dump_json().encode()


def update_msg(node: str, version: int, state: UpdateState, progress: float | None = None) -> bytes:
    return UpdateStatus(node=node, name="shapes", version=version, state=state,
                        progress=progress).model_dump_json().encode()


def tiny_bundle(dst: Path, name: str, version: int, key: SigningKey | None = None) -> Path:
    """A well-formed, signed bundle whose model file is opaque bytes (the dashboard never loads models)."""
    return sim_bundle(dst, name, version, key)


# ---- telemetry ----------------------------------------------------------------------------------------
def test_read_telemetry_takes_the_contract_fields() -> None:
    r = read_telemetry(telemetry("a", p50=4.0, watts=3.9, estimated=True))
    assert (r.p50_ms, r.p95_ms, r.stage) == (4.0, 6.0, "invoke")
    assert r.e2e_p95_ms == 13.0
    assert (r.power_w, r.power_estimated, r.power_source) == (3.9, True, "estimated")
    assert (r.temp_c, r.tpu_temp_c, r.backend, r.model_version) == (51.5, 44.0, "edgetpu", 3)


@pytest.mark.parametrize("payload, why", [
    (b"\xff\xfe not json", "not JSON"),
    (b"[1, 2, 3]", "not an object"),
    (b'{"node": "a"}', "interval_s"),
    (json.dumps({"node": "a", "interval_s": "soon", "agent_version": "1", "uptime_s": 1}).encode(), "interval_s"),
    (b'{"node": "a", "interval_s": 1, "agent_version": "1", "uptime_s": NaN}', "non-finite"),
])
def test_read_telemetry_rejects_malformed_payloads_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(MalformedPayload, match=why):
        read_telemetry(payload)


# ---- state --------------------------------------------------------------------------------------------
def test_node_row_is_built_from_every_leaf() -> None:
    s = FleetState(T)
    s.handle(T.availability("a"), b"online")
    s.handle(T.state("a"), state_msg("a", 2, ["lab"]))
    s.handle(T.telemetry("a"), telemetry("a"))
    det = DetectionsMessage(node="a", frame_ts=123.0, frame_index=7, model_name="shapes", model_version=2,
                            backend="cpu", detections=[Detection(box=(.1, .1, .3, .3), class_id=0,
                                                                 class_name="circle", score=.9)])
    s.handle(T.detections("a"), det.model_dump_json().encode())
    s.handle(T.update("a"), update_msg("a", 3, UpdateState.DOWNLOADING, 0.5))
    s.handle(T.snapshot("a"), b"\xff\xd8jpeg")
    assert s.handle("fleet/announce/all", b"{}") is None  # not a node topic
    assert s.handle(T.node("a", "cmd"), b"{}") is None  # a leaf the dashboard does not draw
    (n,) = s.nodes()
    assert n.online is True and n.groups == ["lab"] and n.model_version == 2
    assert n.telemetry is not None and n.telemetry.p50_ms == 4.0
    assert n.detections[0].class_name == "circle" and n.detections_frame == 7
    assert n.update is not None and n.update.progress == 0.5
    assert s.snapshot_jpeg("a") == b"\xff\xd8jpeg" and n.has_snapshot and not n.faults
    s.handle(T.availability("a"), b"offline")
    assert s.node("a").online is False  # type: ignore[union-attr]


def test_malformed_telemetry_marks_only_that_node_faulty() -> None:
    clock = Clock()
    s = FleetState(T, clock=clock)
    for node in ("a", "b"):
        s.handle(T.availability(node), b"online")
        s.handle(T.telemetry(node), telemetry(node, p50=4.0))
    s.handle(T.telemetry("b"), b'{"node": "b", "latency": 12}')
    s.handle(T.telemetry("a"), telemetry("a", p50=5.0))
    a, b = s.nodes()
    assert not a.faults and a.telemetry is not None and a.telemetry.p50_ms == 5.0
    assert "telemetry" in b.faults and b.rejected == 1
    assert b.telemetry is not None and b.telemetry.p50_ms == 4.0  # the last good figures stay
    # One bad message among good ones stays visible for a while, then a good payload clears it.
    clock.t += 1
    s.handle(T.telemetry("b"), telemetry("b"))
    assert "telemetry" in s.node("b").faults  # type: ignore[union-attr]
    clock.t += 30
    s.handle(T.telemetry("b"), telemetry("b"))
    assert not s.node("b").faults  # type: ignore[union-attr]
    snap = json.loads(dumps(s.snapshot()))
    assert snap["stats"] == {"nodes": 2, "messages": 8, "rejected": 1, "online": 2, "broker": False,
                              "broker_error": None}


def test_other_malformed_leaves_are_faults_too() -> None:
    s = FleetState(T)
    s.handle(T.availability("a"), b"maybe")
    s.handle(T.state("a"), b'{"node": "a", "status": "dancing"}')
    s.handle(T.update("a"), b"not json")
    s.handle(T.detections("a"), b'{"node": "a"}')
    assert set(s.node("a").faults) == {"availability", "state", "update", "detections"}  # type: ignore[union-attr]


def test_deltas_carry_only_changed_nodes_and_a_history_tail() -> None:
    clock = Clock()
    s = FleetState(T, history=50, clock=clock)
    for i in range(60):
        clock.t += 1
        s.handle(T.telemetry("a"), telemetry("a", p50=float(i + 1)))
    s.handle(T.telemetry("b"), telemetry("b"))
    snap = s.snapshot()
    a = next(n for n in snap["nodes"] if n["id"] == "a")
    assert len(a["hist"]) == 50 and a["hist"][-1][1] == 60.0  # capped history, newest last
    v = snap["v"]
    assert s.delta(v) is None and not s.wait(v, 0.01)
    s.handle(T.telemetry("b"), telemetry("b", p50=7.0))
    d = s.delta(v)
    assert d is not None and [n["id"] for n in d["nodes"]] == ["b"] and len(d["nodes"][0]["hist"]) == 2
    assert "rollouts" not in d and s.wait(v, 0.01)


def test_rollout_follows_each_targeted_node_to_its_end() -> None:
    clock = Clock()
    s = FleetState(T, clock=clock)
    s.handle(T.state("a"), state_msg("a", 1, ["lab"]))
    s.handle(T.state("b"), state_msg("b", 1, ["lab"]))
    s.handle(T.state("c"), state_msg("c", 1, ["field"]))
    s.handle(T.update("a"), update_msg("a", 2, UpdateState.COMMITTED))  # retained, from before the rollout
    clock.t += 1
    r = s.add_rollout("shapes-v2", "shapes", 2, Target.parse("group:lab"))
    view = s.rollouts()[0]
    assert [x["node"] for x in view["nodes"]] == ["a", "b"]
    assert [x["state"] for x in view["nodes"]] == ["waiting", "waiting"] and not view["done"]
    clock.t += 1
    s.handle(T.update("a"), update_msg("a", 2, UpdateState.DOWNLOADING, 0.4))
    s.handle(T.update("b"), update_msg("b", 2, UpdateState.VERIFYING))
    view = s.rollouts()[0]
    assert [(x["state"], x["progress"]) for x in view["nodes"]] == [("downloading", 0.4), ("verifying", None)]
    s.handle(T.update("a"), update_msg("a", 2, UpdateState.COMMITTED))
    s.handle(T.update("b"), update_msg("b", 2, UpdateState.ROLLED_BACK))
    view = s.rollouts()[0]
    assert view["done"] and view["committed"] == 1 and view["failed"] == 1 and view["id"] == r.id


def test_table_and_watch_events() -> None:
    clock = Clock()
    s = FleetState(T, clock=clock)
    s.handle(T.availability("a"), b"online")
    s.handle(T.state("a"), state_msg("a", 1))
    s.handle(T.telemetry("a"), telemetry("a", estimated=True))
    s.handle(T.availability("b"), b"offline")
    s.handle(T.telemetry("b"), b"garbage")
    text = format_table(s.nodes(), now=clock.t)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["NODE", "STATUS", "MODEL"]
    assert lines[1].split()[:4] == ["a", "running", "shapes", "v1"] and "3.90 est" in lines[1]
    assert lines[2].split()[:2] == ["b", "faulty"] and "b: telemetry: telemetry is not JSON" in text
    before = {n.id: n for n in s.nodes()}
    s.handle(T.availability("a"), b"offline")
    s.handle(T.update("a"), update_msg("a", 2, UpdateState.COMMITTED))
    s.handle(T.state("a"), state_msg("a", 2))
    ev = changes(before, s.nodes(), now=clock.t)
    assert any(e.endswith("a offline") for e in ev)
    assert any("a update v2 committed" in e for e in ev) and any("a now runs shapes v2" in e for e in ev)


def test_find_bundles_lists_good_and_broken_bundles(tmp_path: Path) -> None:
    tiny_bundle(tmp_path / "shapes-v1", "shapes", 1)
    tiny_bundle(tmp_path / "nested" / "shapes-v2", "shapes", 2)
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "manifest.json").write_text("{}")
    (tmp_path / "not-a-bundle").mkdir()
    found = find_bundles([tmp_path, tmp_path / "missing"])
    assert [(b.rel, b.version) for b in found] == [("broken", None), ("nested/shapes-v2", 2), ("shapes-v1", 1)]
    assert found[0].error and "invalid" in found[0].error
    assert found[1].signed and found[1].key_id and found[1].models["cpu"] == "model_cpu.tflite"
    assert [b.rel for b in find_bundles([tmp_path / "shapes-v1"])] == ["."]


def test_find_bundles_offers_only_bundles_a_trusted_key_signed(tmp_path: Path) -> None:
    from agent.security.signing import Keyring

    fleet = SigningKey.generate()
    ring = Keyring()
    ring.add_pem(fleet.public_pem())
    tiny_bundle(tmp_path / "ours", "shapes", 1, fleet)
    tiny_bundle(tmp_path / "theirs", "shapes", 2)  # signed by some other key
    tiny_bundle(tmp_path / "bare", "shapes", 3, fleet)
    (tmp_path / "bare" / "manifest.sig").unlink()
    found = {b.rel: b for b in find_bundles([tmp_path], keyring=ring)}
    assert found["ours"].refused is None
    assert "unknown signing key" in (found["theirs"].refused or "")
    assert "manifest.sig" in (found["bare"].refused or "") and not found["bare"].signed
    assert all(b.refused and "no trusted keys" in b.refused for b in find_bundles([tmp_path]))


def test_dashboard_imports_no_ml_framework() -> None:
    """The dashboard runs from the builder venv but must start fast: no torch, TensorFlow or onnx."""
    import subprocess
    import sys

    code = ("import sys, builder.commands.dashboard, builder.commands.fleet, builder.dashboard.server, "
            "builder.dashboard.rollout, builder.fleet.publish; "
            "print(','.join(m for m in ('torch', 'tensorflow', 'onnx', 'libreyolo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---- several cameras on one node (issue 16) -------------------------------------------------------------
def multicam_telemetry(node: str) -> bytes:
    base = json.loads(telemetry(node))
    base["cameras"] = {
        "front": CameraTelemetry(state="streaming", device="usb:0", camera_fps=15.0, inference_fps=14.5,
                                 dropped_fps=0.5, latency=StageLatency(count=40, p50_ms=6.0, p95_ms=9.0),
                                 end_to_end=StageLatency(count=40, p50_ms=20.0, p95_ms=31.0)).model_dump(mode="json"),
        "yard": CameraTelemetry(state="stalled", device="cpu", camera_fps=0.0, inference_fps=0.0).model_dump(mode="json"),
    }
    return json.dumps(base).encode()


def test_a_node_with_two_cameras_carries_both_with_their_fields() -> None:
    s = FleetState(T)
    s.handle(T.availability("m"), b"online")
    s.handle(T.telemetry("m"), multicam_telemetry("m"))
    det = DetectionsMessage(node="m", frame_ts=9.0, frame_index=3, model_name="shapes", model_version=3, backend="edgetpu",
                            camera="front", detections=[Detection(box=(.1, .1, .2, .2), class_id=1, class_name="square",
                                                                  score=.8)])
    assert s.handle(T.camera_detections("m", "front"), det.model_dump_json().encode()) == "m"
    (n,) = s.nodes()
    assert sorted(n.cameras) == ["front", "yard"]
    f, y = n.cameras["front"], n.cameras["yard"]
    assert (f.state, f.device, f.camera_fps, f.fps, f.dropped_fps) == ("streaming", "usb:0", 15.0, 14.5, 0.5)
    assert (f.p50_ms, f.p95_ms, f.e2e_p95_ms) == (6.0, 9.0, 31.0)
    assert (f.detections, f.classes, f.detections_ts) == (1, ["square"], 9.0)
    assert (y.state, y.device, y.detections) == ("stalled", "cpu", None)
    s.handle(T.telemetry("m"), multicam_telemetry("m"))  # a new window keeps the detections summary
    assert s.node("m").cameras["front"].detections == 1  # type: ignore[union-attr]
    page = json.loads(dumps(s.snapshot()))["nodes"][0]
    assert page["cameras"]["yard"]["state"] == "stalled" and "cameras" not in page["telemetry"]
    text = format_table(s.nodes(), now=s.clock())
    lines = text.splitlines()
    node_line = next(i for i, line in enumerate(lines) if line.startswith("m "))
    assert lines[node_line + 1].startswith("  └ front") and "usb:0" in lines[node_line + 1]
    assert lines[node_line + 2].startswith("  └ yard") and "STALLED" in lines[node_line + 2]


def test_a_node_without_cameras_renders_as_before() -> None:
    s = FleetState(T)
    s.handle(T.availability("old"), b"online")
    s.handle(T.telemetry("old"), telemetry("old"))
    det = DetectionsMessage(node="old", frame_ts=1.0, frame_index=1, model_name="shapes", model_version=3,
                            backend="cpu", detections=[])
    assert det.camera is None
    s.handle(T.detections("old"), det.model_dump_json().encode())
    (n,) = s.nodes()
    assert n.cameras == {} and n.detections_frame == 1 and not n.faults
    assert format_table(s.nodes(), now=s.clock()).count("\n") == 1  # header + its one row


def test_camera_detections_faults_and_watch_events() -> None:
    s = FleetState(T)
    s.handle(T.telemetry("m"), multicam_telemetry("m"))
    s.handle(T.camera_detections("m", "yard"), b"{not json")
    assert "camera/yard/detections" in s.node("m").faults  # type: ignore[union-attr]
    assert s.handle(T.node("m", "camera/yard/snapshot"), b"jpeg") is None  # not drawn
    before = {n.id: n for n in s.nodes()}
    base = json.loads(multicam_telemetry("m"))
    base["cameras"]["yard"]["state"] = "streaming"
    s.handle(T.telemetry("m"), json.dumps(base).encode())
    assert any("camera yard streaming" in e for e in changes(before, s.nodes(), now=s.clock()))
