"""The agent daemon end to end over a real Mosquitto: detections on a generated video match the drawn
objects (IoU and class against the generator's ground truth), retained state and availability (LWT),
degraded on a bundle whose Edge TPU model cannot run here, a camera that disappears and comes back, a
broker restart, and bad or missing models that never stop the process."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import DetectionQuality, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from agent.camera.sources import CameraState
from agent.config import AgentConfig
from agent.protocol.messages import DetectionsMessage, NodeState
from agent.protocol.topics import Topics
from agent.security.bundle import Bundle, write_manifest
from agent.security.signing import SigningKey
from agent.service.daemon import AgentService
from builder.data.synth import FrameTruth, make_video


class Watcher:
    """A real MQTT subscriber recording every message under the prefix (retained ones included)."""

    def __init__(self, broker: Any, prefix: str) -> None:
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect(broker.host, broker.port)
        self.c.subscribe(f"{prefix}/#", qos=1)
        self.c.loop_start()

    def _on(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((m.topic, m.payload, bool(m.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.msgs if t == topic]

    def last_state(self, topic: str) -> NodeState | None:
        got = self.on(topic)
        return NodeState.model_validate_json(got[-1]) if got else None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def watch(mqtt_broker: Any) -> Iterator[Watcher]:
    w = Watcher(mqtt_broker, "svc")
    yield w
    w.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, trained_bundle: Path) -> tuple[Path, list[FrameTruth]]:
    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    p = tmp_path_factory.mktemp("svc") / "scene.avi"
    return p, make_video(p, n_frames=30, size=(320, 240), fps=10, classes=classes, seed=5)


def make_cfg(mq: Any, bundle: Path | None, keys: Path, video: Path, tmp_path: Path, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = dict(
        node_id="cam-1",
        groups=["garden"],
        topic_prefix="svc",
        broker={"url": mq.url, "reconnect_min_s": 1, "reconnect_max_s": 2},
        camera={"source": str(video), "loop": True, "realtime": True, "backoff_initial_s": 0.1,
                "backoff_max_s": 0.5},
        backend={"prefer": "cpu"},
        detect={"score_threshold": 0.3},  # as tests/test_engine.py (SCORE)
        publish={"max_rate_hz": 50},
        state_dir=tmp_path / "state",
        trusted_keys_dir=keys,
        bundle=bundle,
        state_interval_s=60,
    )
    base.update(kw)
    return AgentConfig(**base)


@pytest.fixture
def service_factory() -> Iterator[Any]:
    made: list[AgentService] = []

    def make(cfg: AgentConfig) -> AgentService:
        s = AgentService(cfg)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


T = Topics("svc")


def test_detections_match_ground_truth(mqtt_broker: Any, watch: Watcher, trained_bundle: Path,
                                       trained_bundle_keys: Path, scene: tuple[Path, list[FrameTruth]],
                                       tmp_path: Path, service_factory: Any) -> None:
    video, truth = scene
    svc = service_factory(make_cfg(mqtt_broker, trained_bundle, trained_bundle_keys, video, tmp_path))
    svc.start()
    topic = T.detections("cam-1")
    assert wait_for(lambda: len(watch.on(topic)) >= 15, 30), svc.stats()
    assert watch.on(T.availability("cam-1"))[-1] == b"online"
    st = watch.last_state(T.state("cam-1"))
    assert st is not None and st.status == "running" and st.backend == "cpu" and st.camera == "streaming"
    m = Bundle.load(trained_bundle).manifest
    assert st.model is not None and (st.model.name, st.model.version) == (m.name, m.version)

    msgs = [DetectionsMessage.model_validate_json(p) for p in watch.on(topic)]
    quality = DetectionQuality()
    for msg in msgs:
        assert msg.node == "cam-1" and msg.model_name == m.name and msg.model_version == m.version
        assert msg.backend == "cpu" and msg.frame_ts > 0
        # Camera frame k (1-based, file read from its start, looping) is frame (k-1) % n of the video.
        t = truth[(msg.frame_index - 1) % len(truth)]
        quality.add([(d.box, d.class_name) for d in msg.detections], t.boxes, t.class_names)
    quality.check()  # a wrong frame index, box mapping or class table fails it

    svc.stop()
    assert wait_for(lambda: watch.on(T.availability("cam-1"))[-1:] == [b"offline"], 5)
    last = watch.last_state(T.state("cam-1"))
    assert last is not None and last.status == "stopped"


def test_degraded_when_edgetpu_model_cannot_load(mqtt_broker: Any, watch: Watcher, trained_bundle: Path,
                                                 trained_bundle_key: Path, trained_bundle_keys: Path,
                                                 coral_data: Path, scene: tuple[Path, list[FrameTruth]],
                                                 tmp_path: Path, service_factory: Any) -> None:
    from agent.security.bundle import file_entry

    root = tmp_path / "tpu-bundle"
    shutil.copytree(trained_bundle, root)
    shutil.copy(coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", root / "model_edgetpu.tflite")
    m = Bundle.load(root, check=False).manifest
    files = [f for f in m.files if f.path != "model_edgetpu.tflite"] + [file_entry(root, "model_edgetpu.tflite")]
    write_manifest(root, m.model_copy(update={
        "files": files, "models": m.models.model_copy(update={"edgetpu": "model_edgetpu.tflite"})}),
        SigningKey.load(trained_bundle_key))
    (tmp_path / "sys").mkdir()
    (tmp_path / "dev").mkdir()
    cfg = make_cfg(mqtt_broker, root, trained_bundle_keys, scene[0], tmp_path,
                   backend={"prefer": "edgetpu", "edgetpu": {"sysfs_root": str(tmp_path / "sys"),
                                                            "dev_root": str(tmp_path / "dev")}})
    svc = service_factory(cfg)
    svc.start()
    assert wait_for(lambda: len(watch.on(T.detections("cam-1"))) >= 3, 30)
    st = watch.last_state(T.state("cam-1"))
    assert st is not None and st.status == "degraded" and st.backend == "cpu"
    assert "no Edge TPU found" in (st.reason or "")
    msg = DetectionsMessage.model_validate_json(watch.on(T.detections("cam-1"))[-1])
    assert msg.backend == "cpu" and msg.detections


def test_camera_disappears_and_comes_back(mqtt_broker: Any, watch: Watcher, trained_bundle: Path,
                                          trained_bundle_keys: Path, scene: tuple[Path, list[FrameTruth]],
                                          tmp_path: Path, service_factory: Any) -> None:
    # A short clip so the loop reopens the file (and notices it is gone) quickly.
    video = tmp_path / "cam.avi"
    classes = Bundle.load(trained_bundle).manifest.class_names
    make_video(video, n_frames=5, size=(320, 240), fps=10, classes=classes, seed=2)
    saved = tmp_path / "saved.avi"
    shutil.copy(video, saved)
    svc = service_factory(make_cfg(mqtt_broker, trained_bundle, trained_bundle_keys, video, tmp_path))
    runner = threading.Thread(target=svc.run, kwargs={"install_signal_handlers": False}, daemon=True)
    runner.start()
    topic = T.detections("cam-1")
    assert wait_for(lambda: len(watch.on(topic)) >= 3, 30)
    video.unlink()
    assert wait_for(lambda: svc.camera.reconnects >= 2, 10), svc.camera.status()
    assert wait_for(lambda: (watch.last_state(T.state("cam-1")) or NodeState(
        node="x", status="running", agent_version="0")).camera in ("reconnecting", "connecting"), 5)
    st = watch.last_state(T.state("cam-1"))
    assert st is not None and "does not exist" in (st.reason or "")
    n = len(watch.on(topic))
    time.sleep(0.5)
    assert len(watch.on(topic)) <= n + 1  # nothing new while it is gone (one in flight at most)
    shutil.copy(saved, video)
    assert wait_for(lambda: len(watch.on(topic)) >= n + 3, 15), svc.camera.status()
    assert svc.camera.state == CameraState.STREAMING and runner.is_alive()
    assert wait_for(lambda: (watch.last_state(T.state("cam-1")) or NodeState(
        node="x", status="error", agent_version="0")).camera == "streaming", 5)
    svc.request_stop()
    runner.join(10)
    assert not runner.is_alive()


def test_broker_restart_reconnects_and_republishes(mqtt_broker: Any, trained_bundle: Path,
                                                   trained_bundle_keys: Path, scene: tuple[Path, list[FrameTruth]],
                                                   tmp_path: Path, service_factory: Any) -> None:
    svc = service_factory(make_cfg(mqtt_broker, trained_bundle, trained_bundle_keys, scene[0], tmp_path))
    svc.start()
    assert svc.mqtt.wait_connected(10)
    mqtt_broker.stop()
    assert wait_for(lambda: not svc.mqtt.connected, 10)
    frames = svc.pipeline.counters.frames
    time.sleep(0.5)
    assert svc.pipeline.counters.frames > frames  # inference never waits for the broker
    mqtt_broker.start()
    assert wait_for(lambda: svc.mqtt.connected, 20)
    assert svc.mqtt.counters.reconnects >= 1
    w = Watcher(mqtt_broker, "svc")  # a fresh subscriber sees the replayed retained state
    try:
        assert wait_for(lambda: w.on(T.availability("cam-1"))[-1:] == [b"online"], 10)
        assert wait_for(lambda: w.last_state(T.state("cam-1")) is not None, 10)
        assert wait_for(lambda: len(w.on(T.detections("cam-1"))) >= 2, 10)
    finally:
        w.close()
    assert svc.stats()["mqtt_reconnects"] >= 1


def test_lwt_offline_on_lost_connection(mqtt_broker: Any, watch: Watcher, trained_bundle: Path,
                                        trained_bundle_keys: Path, scene: tuple[Path, list[FrameTruth]],
                                        tmp_path: Path, service_factory: Any) -> None:
    svc = service_factory(make_cfg(mqtt_broker, trained_bundle, trained_bundle_keys, scene[0], tmp_path,
                                   broker={"url": mqtt_broker.url, "keepalive_s": 5, "reconnect_min_s": 1,
                                           "reconnect_max_s": 1}))
    svc.start()
    assert svc.mqtt.wait_connected(10)
    assert wait_for(lambda: watch.on(T.availability("cam-1"))[-1:] == [b"online"], 5)
    sock = svc.mqtt._client.socket()  # an abrupt network loss: no DISCONNECT packet reaches the broker
    assert sock is not None
    sock.shutdown(2)
    assert wait_for(lambda: b"offline" in watch.on(T.availability("cam-1")), 10)  # the broker's LWT
    assert wait_for(lambda: watch.on(T.availability("cam-1"))[-1:] == [b"online"], 15)  # and back


def test_no_model_and_bad_model_keep_running(mqtt_broker: Any, watch: Watcher, trained_bundle: Path,
                                             trained_bundle_keys: Path, scene: tuple[Path, list[FrameTruth]],
                                             tmp_path: Path, service_factory: Any) -> None:
    svc = service_factory(make_cfg(mqtt_broker, None, trained_bundle_keys, scene[0], tmp_path))
    svc.start()
    assert wait_for(lambda: watch.last_state(T.state("cam-1")) is not None, 10)
    st = watch.last_state(T.state("cam-1"))
    assert st is not None and st.status == "starting" and "no model" in (st.reason or "")
    assert wait_for(lambda: svc.pipeline.counters.no_model > 0, 10)  # frames arrive, nothing to run

    tampered = tmp_path / "tampered"
    shutil.copytree(trained_bundle, tampered)
    raw = (tampered / "manifest.json").read_text().replace('"version": ', '"version": 1', 1)
    (tampered / "manifest.json").write_text(raw)
    svc2 = service_factory(make_cfg(mqtt_broker, tampered, trained_bundle_keys, scene[0], tmp_path,
                                    node_id="cam-2"))
    svc2.start()
    assert wait_for(lambda: watch.last_state(T.state("cam-2")) is not None, 10)
    st2 = watch.last_state(T.state("cam-2"))
    assert st2 is not None and st2.status == "error" and "signature" in (st2.reason or "").lower()
    # A good model arrives later (what the updater does): hot-swapped in, state follows.
    eng = svc2.make_engine(Bundle.load(trained_bundle))
    svc2.install_engine(eng)
    assert wait_for(lambda: (watch.last_state(T.state("cam-2")) or st2).status == "running", 10)
    assert wait_for(lambda: len(watch.on(T.detections("cam-2"))) >= 2, 20)
