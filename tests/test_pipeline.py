"""The pipeline on a real video file and a real Engine: per-frame stats and hooks, swap between two frames
with none lost, target FPS, errors that never stop the loop, and the detections publisher over a real
broker (rate limit, snapshot)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from agent.camera.capture import Camera
from agent.config import AgentConfig, BrokerConfig, CameraConfig, DetectConfig, PublishConfig
from agent.inference.engine import Engine
from agent.inference.frames import FrameResult
from agent.inference.pipeline import DetectionPublisher, Pipeline
from agent.protocol.messages import DetectionsMessage
from agent.protocol.topics import Topics
from agent.security.bundle import Bundle
from agent.security.signing import Keyring
from agent.service.mqtt import MqttClient
from builder.data.synth import make_video


def agent_cfg(tmp_path: Path, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = dict(state_dir=tmp_path / "state", trusted_keys_dir=tmp_path / "keys",
                                backend={"prefer": "cpu"}, detect={"score_threshold": 0.3})
    return AgentConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, trained_bundle: Path) -> Path:
    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    p = tmp_path_factory.mktemp("pipe") / "clip.avi"
    make_video(p, n_frames=20, size=(320, 240), fps=20, classes=classes, seed=5)
    return p


@pytest.fixture
def bundle(trained_bundle: Path, trained_bundle_keys: Path) -> Bundle:
    return Bundle.load(trained_bundle, Keyring.load(trained_bundle_keys))


def camera(clip: Path, realtime: bool = True) -> Camera:
    return Camera(CameraConfig(source=str(clip), realtime=realtime, loop=True, backoff_initial_s=0.05))


class Recorder:
    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.lock = threading.Lock()

    def __call__(self, r: FrameResult) -> None:
        with self.lock:
            self.results.append(r)

    def snapshot(self) -> list[FrameResult]:
        with self.lock:
            return list(self.results)


def test_frames_flow_with_stats_and_hooks(bundle: Bundle, clip: Path, tmp_path: Path) -> None:
    eng = Engine.load(bundle, agent_cfg(tmp_path))
    cam = camera(clip, realtime=False).start()
    rec, ticks = Recorder(), []
    p = Pipeline(cam, eng, DetectConfig(score_threshold=0.3))
    p.add_frame_hook(rec)
    p.add_tick_hook(lambda: ticks.append(1))
    p.start()
    try:
        assert wait_for(lambda: len(rec.results) >= 15, 20), p.counters
    finally:
        p.stop()
        cam.stop()
    res = rec.snapshot()
    idx = [r.frame.index for r in res]
    assert idx == sorted(set(idx))  # each frame once, in order
    assert sum(len(r.detections) for r in res) > 0
    s = res[-1].stats
    assert s.invoke_s > 0 and s.preprocess_s > 0 and s.end_to_end_s >= s.invoke_s
    assert s.backend == "cpu" and s.model_version == bundle.manifest.version and s.error is None
    assert res[-1].engine is eng
    assert len(ticks) >= len(res)
    # Every captured frame was either inferred or dropped as stale (and counted), never queued.
    assert cam.frames >= cam.dropped + len(res)
    assert cam.frames - cam.dropped - len(res) <= 2  # at most the frame in the slot / in flight


def test_swap_engine_between_frames_without_losing_one(bundle: Bundle, clip: Path, tmp_path: Path) -> None:
    a = Engine.load(bundle, agent_cfg(tmp_path))
    b = Engine.load(bundle, agent_cfg(tmp_path))
    cam = camera(clip).start()
    rec = Recorder()
    p = Pipeline(cam, a)
    p.add_frame_hook(rec)
    p.start()
    try:
        assert wait_for(lambda: len(rec.results) >= 5, 10)
        taken_before = cam.frames - cam.dropped
        old = p.swap_engine(b)
        assert old is a and p.engine is b
        n = len(rec.results)
        assert wait_for(lambda: len(rec.results) >= n + 5, 10)
    finally:
        p.stop()
        cam.stop()
    res = rec.snapshot()
    engines = [r.engine for r in res]
    first_b = engines.index(b)
    assert all(e is a for e in engines[:first_b]) and all(e is b for e in engines[first_b:])
    # Every frame the inference thread took was inferred: none skipped at the swap.
    assert p.counters.frames == len(res) and p.counters.errors == 0 and p.counters.no_model == 0
    assert taken_before > 0 and p.counters.swaps == 1
    idx = [r.frame.index for r in res]
    assert idx == sorted(set(idx))
    a.close()


def test_target_fps_caps_the_rate(bundle: Bundle, clip: Path, tmp_path: Path) -> None:
    eng = Engine.load(bundle, agent_cfg(tmp_path))
    cam = camera(clip, realtime=False).start()
    rec = Recorder()
    p = Pipeline(cam, eng, DetectConfig(target_fps=5))
    p.add_frame_hook(rec)
    p.start()
    try:
        time.sleep(0.3)
        n0, t0 = len(rec.results), time.monotonic()
        time.sleep(2.0)
        rate = (len(rec.results) - n0) / (time.monotonic() - t0)
    finally:
        p.stop()
        cam.stop()
    assert 3.0 <= rate <= 5.6, rate


def test_failing_engine_counts_errors_and_loop_survives(bundle: Bundle, clip: Path, tmp_path: Path) -> None:
    good = Engine.load(bundle, agent_cfg(tmp_path))
    broken = Engine.load(bundle, agent_cfg(tmp_path))
    broken.close()  # every infer raises EngineError("engine is closed")
    cam = camera(clip).start()
    rec = Recorder()
    p = Pipeline(cam, broken)
    p.add_frame_hook(rec)
    p.start()
    try:
        assert wait_for(lambda: p.counters.errors >= 3, 10)
        assert "closed" in (rec.snapshot()[-1].stats.error or "")
        p.swap_engine(good)
        n = p.counters.frames
        assert wait_for(lambda: p.counters.frames >= n + 3, 10)
        assert rec.snapshot()[-1].stats.error is None
        assert p.running
    finally:
        p.stop()
        cam.stop()


def test_no_model_waits_then_swap_installs_first(bundle: Bundle, clip: Path, tmp_path: Path) -> None:
    cam = camera(clip).start()
    p = Pipeline(cam, None).start()
    try:
        assert wait_for(lambda: p.counters.no_model >= 2, 10)
        assert p.swap_engine(Engine.load(bundle, agent_cfg(tmp_path))) is None
        assert wait_for(lambda: p.counters.frames >= 2, 10)
    finally:
        p.stop()
        cam.stop()


def test_publisher_rate_limit_and_snapshot_over_real_broker(bundle: Bundle, clip: Path, tmp_path: Path,
                                                            mqtt_broker: Any) -> None:
    topics = Topics("t")
    got: list[tuple[str, bytes]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    sub.connect(mqtt_broker.host, mqtt_broker.port)
    sub.subscribe("t/#")
    sub.loop_start()
    client = MqttClient(BrokerConfig(url=mqtt_broker.url), "pub-test")
    client.start()
    assert client.wait_connected(5)
    pub = DetectionPublisher(client, topics, "n1", PublishConfig(max_rate_hz=4, snapshot=True,
                                                                 snapshot_interval_s=0.5, snapshot_max_width=160))
    eng = Engine.load(bundle, agent_cfg(tmp_path))
    cam = camera(clip, realtime=False).start()
    p = Pipeline(cam, eng, sink=pub).start()
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        time.sleep(2.0)
        elapsed = time.monotonic() - t0
    finally:
        p.stop()
        cam.stop()
        client.stop()
        time.sleep(0.2)
        sub.loop_stop()
        sub.disconnect()
    dets = [DetectionsMessage.model_validate_json(pl) for t, pl in got if t == topics.detections("n1")]
    snaps = [pl for t, pl in got if t == topics.snapshot("n1")]
    assert p.counters.frames > 10
    assert 3 <= len(dets) <= 4 * (elapsed + 0.6) + 1, len(dets)  # at most ~4 per second
    assert pub.counters.rate_limited > 0
    assert all(d.node == "n1" and d.model_version == bundle.manifest.version and d.detections for d in dets)
    assert dets[0].frame_ts > 0 and dets[0].detections[0].class_name in bundle.manifest.class_names
    assert 1 <= len(snaps) <= 6
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(snaps[0], np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] == 160


def test_publisher_marks_objects_leaving_and_skips_empty_frames(mqtt_broker: Any) -> None:
    import numpy as np

    from agent.camera.frame import Frame
    from agent.inference.frames import FrameStats
    from agent.protocol.messages import Detection

    topics = Topics("p")
    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect(mqtt_broker.host, mqtt_broker.port)
    sub.subscribe(topics.detections("n"))
    sub.loop_start()
    client = MqttClient(BrokerConfig(url=mqtt_broker.url), "pub-empty")
    client.start()
    assert client.wait_connected(5)
    pub = DetectionPublisher(client, topics, "n", PublishConfig(max_rate_hz=1000))

    def result(i: int, n: int) -> FrameResult:
        dets = [Detection(box=(0.1, 0.1, 0.2, 0.2), class_id=0, class_name="circle", score=0.9)] * n
        st = FrameStats(i, time.time(), 0, 0, 0, 0, 0, n, "cpu", 3)
        return FrameResult(Frame(np.zeros((4, 4, 3), np.uint8), time.time(), time.monotonic(), i), dets, st,
                           "m", 3, "cpu")

    try:
        for i, n in enumerate([0, 1, 1, 0, 0, 0, 2], start=1):
            pub(result(i, n))
            time.sleep(0.01)
        assert wait_for(lambda: len(got) >= 4, 5)
        time.sleep(0.2)
    finally:
        client.stop()
        sub.loop_stop()
        sub.disconnect()
    msgs = [DetectionsMessage.model_validate_json(p) for p in got]
    # frames 2, 3 (objects), 4 (they left: one empty message), 7 (objects again); 1, 5, 6 are not sent
    assert [m.frame_index for m in msgs] == [2, 3, 4, 7]
    assert [len(m.detections) for m in msgs] == [1, 1, 0, 2]
    assert msgs[0].model_version == 3 and msgs[0].backend == "cpu"
