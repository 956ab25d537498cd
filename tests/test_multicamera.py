"""One node, several cameras (issue 16): [[cameras]] config and the legacy [camera] alias, the fair scheduler
(freshest frame of the longest-waiting camera; a stalled camera never slows the others), zones, per-camera
detect overrides, topics and telemetry, a stand-in TPU pool with failover, and a hot swap across cameras."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import read_frames, wait_for
from test_service import Watcher

from agent.camera.capture import Camera
from agent.camera.frame import Frame, LatestFrame
from agent.camera.replay import ReplaySource
from agent.config import AgentConfig, CameraConfig, ConfigError, load_config
from agent.inference.backends import registry
from agent.inference.backends.base import BackendError, BackendSettings
from agent.inference.backends.cpu import CpuBackend, CpuConfig
from agent.inference.backends.edgetpu import EdgeTpuConfig
from agent.inference.config import DetectConfig, PublishConfig, engine_detect
from agent.inference.engine import Engine
from agent.inference.feeds import Feed
from agent.inference.frames import FrameResult, FrameStats
from agent.inference.pipeline import DetectionPublisher, Pipeline
from agent.inference.pool import PoolEngine, load_engine, pool_devices
from agent.inference.scheduler import FairScheduler
from agent.inference.zones import in_zones, points_in_polygon
from agent.protocol.messages import Detection, NodeState
from agent.protocol.telemetry import Telemetry
from agent.protocol.topics import Topics
from agent.security.bundle import Bundle
from agent.security.signing import Keyring
from agent.service.daemon import AgentService
from builder.data.synth import make_video

ROOT = Path(__file__).resolve().parents[1]


def test_cameras_list_and_legacy_alias(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        '[[cameras]]\nname = "front"\nsource = "a.avi"\ntarget_fps = 5\n'
        'detect = { score_threshold = 0.6, classes = ["car"], class_agnostic_nms = false }\n'
        'zones = [[[0, 0.5], [1, 0.5], [1, 1], [0, 1]]]\n'
        '[[cameras]]\nname = "back"\nsource = "rtsp://cam/back"\n')
    cfg = load_config(toml)
    front, back = cfg.camera_entries()
    assert (front.name, front.target_fps, front.zones[0][0]) == ("front", 5, (0.0, 0.5))
    assert front.detect.apply(cfg.detect).score_threshold == 0.6
    assert back.resolved_kind() == "rtsp" and back.detect.apply(cfg.detect) == cfg.detect
    # the shared engine decodes permissively: the lowest threshold, every class, per-class NMS if any camera wants it
    eng = engine_detect(cfg.detect, cfg.camera_entries())
    assert eng.score_threshold == cfg.detect.score_threshold and eng.classes is None and not eng.class_agnostic_nms
    legacy = AgentConfig(camera={"source": "x.avi", "read_timeout_s": 2})
    (only,) = legacy.camera_entries()
    assert (only.name, only.source, only.read_timeout_s) == ("default", "x.avi", 2)


@pytest.mark.parametrize("body, needle", [
    ('[camera]\nsource = "a"\n[[cameras]]\nname = "x"\nsource = "b"\n', "either [camera] or [[cameras]]"),
    ('[[cameras]]\nname = "x"\nsource = "a"\n[[cameras]]\nname = "x"\nsource = "b"\n', "unique: x"),
    ('[[cameras]]\nname = "a/b"\nsource = "a"\n', "camera name"),
    ('[[cameras]]\nname = "x"\nsource = "a"\nzones = [[[0, 0], [2, 0], [1, 1]]]\n', "normalized"),
    ('[[cameras]]\nname = "x"\nsource = "a"\nzones = [[[0, 0], [1, 1]]]\n', "at least 3"),
])
def test_bad_cameras_config(tmp_path: Path, body: str, needle: str) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(body)
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(toml)
    assert needle in str(exc.value)


def test_engine_detect_defaults_to_base() -> None:
    base = DetectConfig(score_threshold=0.5, classes=["car"])
    assert engine_detect(base, []) == base


# ---------------------------------------------------------------------------------------------- pure parts

def test_zones_bottom_centre_in_polygon() -> None:
    lower_half = [(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)]
    triangle = [(0.0, 0.0), (0.4, 0.0), (0.0, 0.4)]
    boxes = np.array([
        [0.1, 0.1, 0.3, 0.7],  # stands in the lower half (its top is outside: only the feet count)
        [0.1, 0.6, 0.3, 0.45],  # degenerate, bottom 0.45: above the zone
        [0.0, 0.0, 0.2, 0.2],  # bottom-centre (0.1, 0.2): inside the triangle
        [0.5, 0.0, 0.7, 0.3],  # nowhere
    ])
    assert in_zones(boxes, [lower_half, triangle]).tolist() == [True, False, True, False]
    assert in_zones(boxes, []).all()  # no zone: everything counts
    assert points_in_polygon(np.array([[0.5, 0.75]]), lower_half).tolist() == [True]
    concave = [(0, 0), (1, 0), (1, 1), (0.5, 0.2), (0, 1)]  # a notch from the top down to (0.5, 0.2)
    assert points_in_polygon(np.array([[0.5, 0.5], [0.5, 0.1], [0.9, 0.5]]), concave).tolist() == [False, True, True]


def det(box: tuple[float, float, float, float], cls: str, score: float) -> Detection:
    return Detection(box=box, class_id={"car": 0, "person": 1}[cls], class_name=cls, score=score)


def test_feed_applies_its_detect_overrides_and_zones() -> None:
    cam = Camera(CameraConfig(source="unused"))
    dets = [det((0.1, 0.6, 0.3, 0.9), "car", 0.9), det((0.11, 0.6, 0.31, 0.9), "person", 0.8),
            det((0.5, 0.1, 0.6, 0.3), "car", 0.7), det((0.6, 0.6, 0.7, 0.9), "car", 0.35)]
    own = DetectConfig(score_threshold=0.5, classes=["car", "person"], class_agnostic_nms=True)
    feed = Feed("yard", cam, own, zones=[[(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)]])
    kept = feed.filter(dets)
    # the person duplicate of the car is suppressed (class-agnostic), the car above the zone and the weak car go
    assert [(d.class_name, d.score) for d in kept] == [("car", 0.9)]
    assert feed.counters.zone_filtered == 1
    per_class = Feed("road", cam, own.model_copy(update={"class_agnostic_nms": False, "classes": ["person"]}))
    assert [d.class_name for d in per_class.filter(dets)] == ["person"]
    assert Feed("raw", cam).filter(dets) == dets  # no overrides, no zones: the engine's detections as they are


class ManualSlotCamera:
    """Just a slot and a name: what the scheduler reads of a Camera."""

    def __init__(self) -> None:
        self.slot = LatestFrame()

    def put(self, i: int) -> None:
        self.slot.put(Frame(np.zeros((2, 2, 3), np.uint8), time.time(), time.monotonic(), i))


def test_scheduler_serves_longest_waiting_camera_and_never_waits_for_a_silent_one() -> None:
    cams = {n: ManualSlotCamera() for n in ("a", "b", "silent")}
    feeds = [Feed(n, c) for n, c in cams.items()]  # type: ignore[arg-type]
    sched = FairScheduler(feeds)
    served = []
    for i in range(1, 7):
        cams["a"].put(i)
        cams["b"].put(i)
        for _ in range(2):
            got = sched.take(0.1)
            assert got is not None
            served.append((got[0].name, got[1].index))
    # both always ready: they alternate, each frame once, the silent camera costs nothing
    assert [n for n, _ in served] == ["a", "b"] * 6
    assert sorted(i for n, i in served if n == "a") == list(range(1, 7))
    t0 = time.monotonic()
    assert sched.take(0.05) is None and time.monotonic() - t0 < 0.5
    # a frame arriving while a loop waits wakes it at once
    threading.Timer(0.05, cams["silent"].put, args=(1,)).start()
    got = sched.take(2.0)
    assert got is not None and got[0].name == "silent"
    # per-camera target_fps: a camera is not served before its due time
    feeds[0].target_fps = 5.0
    cams["a"].put(100)
    assert sched.take(0.1) is not None
    cams["a"].put(101)
    t0 = time.monotonic()
    got = sched.take(1.0)
    assert got is not None and got[1].index == 101 and time.monotonic() - t0 > 0.12


# ---------------------------------------------------------------------------------------------- real engine

@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory, trained_bundle: Path) -> list[np.ndarray]:
    """A 30 fps 320×240 video file of the model's classes, decoded once (replayed from memory)."""
    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    path = tmp_path_factory.mktemp("multicam") / "scene.avi"
    make_video(path, n_frames=30, size=(320, 240), fps=30, classes=classes, seed=11)
    out = read_frames(path)
    assert len(out) == 30
    return out


@pytest.fixture(scope="module")
def engines(trained_bundle: Path, trained_bundle_keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    bundle = Bundle.load(trained_bundle, Keyring.load(trained_bundle_keys))
    cfg = AgentConfig(state_dir=tmp_path_factory.mktemp("state"), backend={"prefer": "cpu"},
                      detect={"score_threshold": 0.3})
    made = [Engine.load(bundle, cfg), Engine.load(bundle, cfg)]
    yield made
    for e in made:
        e.close()


def replay_camera(frames: list[np.ndarray], fps: float, stall_after: int | None = None,
                  release: threading.Event | None = None) -> Camera:
    """A camera on a ReplaySource; a stalling one stalls again on every reconnect."""
    sources = iter([ReplaySource(frames, fps, stall_after, release)])

    def factory() -> ReplaySource:
        return next(sources, None) or ReplaySource(frames, fps, 0, release)

    cfg = CameraConfig(source="replay", read_timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)
    return Camera(cfg, source_factory=factory)


class PerCamera:
    """A frame hook: (monotonic time, frame index) of every inferred frame, per camera."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[float, int]]] = {}
        self.lock = threading.Lock()

    def __call__(self, r: FrameResult) -> None:
        with self.lock:
            self.seen.setdefault(r.camera, []).append((time.monotonic(), r.frame.index))

    def count(self, name: str, t0: float, t1: float) -> int:
        with self.lock:
            return sum(1 for t, _ in self.seen.get(name, []) if t0 <= t < t1)


def engine_rate(engine: Engine, frame: np.ndarray, n: int = 40) -> float:
    for _ in range(3):
        engine.infer(frame)
    t = time.perf_counter()
    for _ in range(n):
        engine.infer(frame)
    return n / (time.perf_counter() - t)


def run_window(feeds: list[Feed], engine: Engine, seconds: float, settle: float = 0.5,
               during: Any = None) -> tuple[PerCamera, float, float]:
    rec = PerCamera()
    for f in feeds:
        f.camera.start()
    p = Pipeline(feeds, engine)
    p.add_frame_hook(rec)
    p.start()
    try:
        time.sleep(settle)
        if during is not None:
            during(p, rec)
        t0 = time.monotonic()
        time.sleep(seconds)
        return rec, t0, time.monotonic()
    finally:
        p.stop()
        for f in feeds:
            f.camera.stop()


def test_three_saturated_cameras_share_fairly_and_a_stalled_one_costs_nothing(
        frames: list[np.ndarray], engines: list[Engine]) -> None:
    """Rounds alternate a one-camera and a three-camera run (the machine is shared: adjacent windows see the
    same load); the median ratio of their inference rates is judged. Then the third camera stalls."""
    eng = engines[0]
    # The same frames per second offered in both runs, 2.25 × what the loop can take: the cameras saturate it
    # together (as three 30 fps cameras do a Pi's Coral; two still do), one camera at three times their rate alone.
    offered = 0.75 * engine_rate(eng, frames[0])
    ratios, rates = [], []
    for _ in range(3):
        rec, t0, t1 = run_window([Feed("solo", replay_camera(frames, 3 * offered))], eng, 1.5)
        single = rec.count("solo", t0, t1) / (t1 - t0)
        feeds = [Feed(n, replay_camera(frames, offered)) for n in ("a", "b", "c")]
        rec, t0, t1 = run_window(feeds, eng, 1.5)
        counts = {f.name: rec.count(f.name, t0, t1) for f in feeds}
        total = sum(counts.values())
        assert min(counts.values()) >= 0.30 * total, counts
        rates.append(total / (t1 - t0))
        ratios.append(rates[-1] / single)
    assert statistics.median(ratios) >= 0.85, (ratios, rates)

    release = threading.Event()
    feeds = [Feed(n, replay_camera(frames, offered)) for n in ("a", "b")]
    stalled = Feed("c", replay_camera(frames, offered, stall_after=int(offered * 1.5), release=release))
    feeds.append(stalled)
    seen_states: set[str] = set()

    def wait_stall(p: Pipeline, rec: PerCamera) -> None:
        assert wait_for(lambda: stalled.camera.stalls >= 1, 10), stalled.camera.status()
        seen_states.add(stalled.camera.state.value)

    try:
        rec, t0, t1 = run_window(feeds, eng, 1.5, during=wait_stall)
        counts = {f.name: rec.count(f.name, t0, t1) for f in feeds}
        stall_rate = sum(counts.values()) / (t1 - t0)
        rec, t2, t3 = run_window([Feed("solo", replay_camera(frames, 3 * offered))], eng, 1.5)
        single = rec.count("solo", t2, t3) / (t3 - t2)
    finally:
        release.set()
    assert "stalled" in seen_states and counts["c"] == 0
    assert min(counts["a"], counts["b"]) >= 0.30 * sum(counts.values()), counts
    # the stalled camera slows nobody: the healthy two keep the loop as busy as one camera does
    assert stall_rate >= 0.85 * min(single, statistics.median(rates)), (stall_rate, single, rates)


def test_hot_swap_across_three_cameras_skips_no_frame(frames: list[np.ndarray], engines: list[Engine]) -> None:
    """Cameras slower than inference: every captured frame is inferred; six swaps lose none of them (a skipped
    index is only ever one the camera's slot overwrote, counted as dropped — not one the swap lost)."""
    a, b = engines
    feeds = [Feed(n, replay_camera(frames, 12.0)) for n in ("a", "b", "c")]  # 36 fps: far below the engine's
    swaps: list[Any] = []

    def swap(p: Pipeline, rec: PerCamera) -> None:
        for i in range(6):
            time.sleep(0.4)
            swaps.append(p.swap_engine(b if i % 2 == 0 else a))

    rec, _, _ = run_window(feeds, a, 0.5, during=swap)
    assert swaps == [a, b, a, b, a, b]
    for f in feeds:
        idx = [i for _, i in rec.seen[f.name]]
        assert len(idx) > 25, f.name
        gaps = sum(y - x - 1 for x, y in zip(idx, idx[1:], strict=False))
        assert idx == sorted(set(idx)), f.name  # each frame once, in order
        assert gaps <= f.camera.dropped, (f.name, gaps, f.camera.dropped)
        assert f.camera.dropped <= 0.1 * len(idx), (f.name, f.camera.dropped)  # a loaded machine may drop a few


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        self.sent.append(topic)
        return True


def test_detections_go_to_each_cameras_topic_and_default_keeps_the_old_one() -> None:
    client = FakeClient()
    pub = DetectionPublisher(client, Topics("p"), "n1", PublishConfig(max_rate_hz=1))
    frame = Frame(np.zeros((4, 4, 3), np.uint8), time.time(), time.monotonic(), 1)
    stats = FrameStats(1, frame.ts, 0, 0, 0, 0, 0, 1, "cpu", 1)
    for cam in ("default", "yard", "yard"):
        pub(FrameResult(frame, [det((0, 0, 1, 1), "car", 0.9)], stats, "m", 1, "cpu", camera=cam))
    assert client.sent == ["p/node/n1/camera/default/detections", "p/node/n1/detections",
                           "p/node/n1/camera/yard/detections"]  # the second yard frame: rate-limited per camera
    assert pub.counters.rate_limited == 1


def test_agent_with_three_cameras_over_mqtt(mqtt_broker: Any, trained_bundle: Path, trained_bundle_keys: Path,
                                            frames: list[np.ndarray], tmp_path: Path) -> None:
    """Two 30 fps video files and a camera that stalls halfway on one agent: detections on three topics, the
    stalled camera named in the state and the telemetry, per-camera telemetry and HA entities."""
    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    videos = []
    for i in range(2):
        videos.append(tmp_path / f"cam{i}.avi")
        make_video(videos[-1], n_frames=30, size=(320, 240), fps=30, classes=classes, seed=20 + i)
    cam = {"loop": True, "realtime": True, "backoff_initial_s": 0.1, "backoff_max_s": 0.5}
    cfg = AgentConfig(
        node_id="mc", topic_prefix="svc", broker={"url": mqtt_broker.url},
        cameras=[{"name": "a", "source": str(videos[0]), **cam}, {"name": "b", "source": str(videos[1]), **cam},
                 {"name": "c", "source": "replay", "read_timeout_s": 0.5}],
        backend={"prefer": "cpu"}, detect={"score_threshold": 0.3}, publish={"max_rate_hz": 50},
        telemetry={"interval_s": 1.0}, state_dir=tmp_path / "state", trusted_keys_dir=trained_bundle_keys,
        bundle=trained_bundle)
    release = threading.Event()
    watch, hass = Watcher(mqtt_broker, "svc"), Watcher(mqtt_broker, "homeassistant")
    svc = AgentService(cfg, cameras={"c": replay_camera(frames, 30.0, stall_after=45, release=release)})
    runner = threading.Thread(target=svc.run, kwargs={"install_signal_handlers": False}, daemon=True)
    runner.start()
    T = Topics("svc")
    try:
        for name in ("a", "b", "c"):
            assert wait_for(lambda n=name: watch.on(T.camera_detections("mc", n)), 20), name  # type: ignore[misc]
        assert not watch.on(T.detections("mc"))  # no camera named default: the alias topic stays silent

        def telemetry_says_stalled() -> bool:
            got = watch.on(T.telemetry("mc"))
            t = Telemetry.model_validate_json(got[-1]) if got else None
            return t is not None and t.cameras["c"].state == "stalled" and t.cameras["a"].inference_fps > 0
        assert wait_for(telemetry_says_stalled, 20)
        tel = Telemetry.model_validate_json(watch.on(T.telemetry("mc"))[-1])
        assert set(tel.cameras) == {"a", "b", "c"}
        assert tel.cameras["b"].device and tel.cameras["b"].latency and tel.cameras["b"].latency.count > 0
        assert wait_for(lambda: "camera c stalled" in (watch.last_state(T.state("mc")) or NodeState(
            node="x", status="error", agent_version="0")).reason or "", 10)
        # a and b keep their rate while c is stalled
        n_a = len(watch.on(T.camera_detections("mc", "a")))
        time.sleep(1.0)
        assert len(watch.on(T.camera_detections("mc", "a"))) > n_a
        assert wait_for(lambda: hass.on("homeassistant/sensor/mc/camera_c_state/config"), 5)
        entity = json.loads(hass.on("homeassistant/sensor/mc/camera_c_fps/config")[-1])
        assert entity["state_topic"] == T.telemetry("mc") and "cameras.c.inference_fps" in entity["value_template"]
    finally:
        release.set()
        svc.request_stop()
        runner.join(10)
        watch.close()
        hass.close()


# ---------------------------------------------------------------------------------------------- TPU pool

FAILED: set[str] = set()  # stand-in devices that are "unplugged"


class StandInTpu(CpuBackend):
    """The Edge TPU as the registry sees it, run by the CPU model under the device's name; a device in FAILED
    cannot be opened and fails at invoke, as an unplugged USB Coral does."""

    name = "edgetpu"
    label = "Edge TPU (stand-in)"

    @classmethod
    def open(cls, model_path: Path | str, cfg: BackendSettings | None = None) -> StandInTpu:
        assert isinstance(cfg, EdgeTpuConfig)
        if cfg.device in FAILED:
            raise BackendError(f"no Edge TPU at {cfg.device}")
        b = super().open(model_path, CpuConfig(threads=1))
        assert isinstance(b, StandInTpu)
        b.device = cfg.device
        return b

    def invoke(self) -> None:
        if self.device in FAILED:
            raise BackendError(f"{self.device}: USB transfer failed")
        super().invoke()


@pytest.fixture
def stand_in_tpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(registry.BACKENDS, "edgetpu", StandInTpu)
    FAILED.clear()
    yield
    FAILED.clear()


def pool_cfg(tmp_path: Path, devices: Any) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "state", detect={"score_threshold": 0.3}, backend={
        "prefer": "edgetpu", "detectors": {"coral": {"type": "edgetpu", "devices": devices, "reprobe_interval_s": 0.3}}})


def test_tpu_pool_spreads_cameras_fails_over_and_recovers(stand_in_tpus: None, trained_bundle: Path,
                                                          trained_bundle_keys: Path, frames: list[np.ndarray],
                                                          tmp_path: Path) -> None:
    cfg = pool_cfg(tmp_path, ["usb:0", "usb:1"])
    assert pool_devices(cfg) == ["usb:0", "usb:1"] and pool_devices(pool_cfg(tmp_path, [])) == []
    bundle = Bundle.load(trained_bundle, Keyring.load(trained_bundle_keys))
    pool = load_engine(bundle, cfg)
    assert isinstance(pool, PoolEngine) and pool.device == "usb:0,usb:1" and pool.state == "running"
    feeds = [Feed(n, replay_camera(frames, 40.0)) for n in ("a", "b")]
    where: list[tuple[float, str, str | None]] = []
    p = Pipeline(feeds, pool, workers=pool.lanes)
    p.add_frame_hook(lambda r: where.append((time.monotonic(), r.camera, r.device)))
    for f in feeds:
        f.camera.start()
    p.start()

    def devices_since(t: float) -> set[str | None]:
        return {d for ts, _, d in list(where) if ts >= t}

    try:
        time.sleep(1.0)
        assert devices_since(0) == {"usb:0", "usb:1"}  # the cameras spread over both devices
        FAILED.add("usb:1")
        assert wait_for(lambda: pool.members[1].state == "degraded", 5)
        assert "usb:1" in (pool.degraded_reason or "")
        t = time.monotonic() + 0.3  # the frame in hand when usb:1 failed still completes, on the CPU
        time.sleep(1.3)
        moved = [(c, d) for ts, c, d in list(where) if ts >= t]
        assert {d for _, d in moved} == {"usb:0"} and {c for c, _ in moved} == {"a", "b"}
        assert {f.device for f in feeds} == {"usb:0"}  # telemetry's per-camera "device"
        FAILED.discard("usb:1")  # plugged back: the re-probe brings it back
        assert wait_for(lambda: pool.members[1].state == "running", 10), pool.describe()
        t = time.monotonic()
        assert wait_for(lambda: "usb:1" in devices_since(t), 5)
        FAILED.update({"usb:0", "usb:1"})  # every TPU gone: the CPU
        assert wait_for(lambda: pool.state == "degraded" and all(m.state == "degraded" for m in pool.members), 5)
        t = time.monotonic()
        assert wait_for(lambda: {d for ts, _, d in list(where) if ts >= t + 0.2} not in (set(), None), 5)
        assert all((d or "").startswith("cpu") for ts, _, d in list(where) if ts >= t + 0.2)
        # an update swaps the model on every device between two frames; the old pool closes cleanly
        FAILED.clear()
        fresh = load_engine(bundle, cfg)
        errors = p.counters.errors
        assert p.swap_engine(fresh) is pool
        pool.close()
        time.sleep(0.5)
        assert p.counters.errors == errors and isinstance(fresh, PoolEngine) and fresh.state == "running"
        assert {d for ts, _, d in list(where)[-10:]} <= {"usb:0", "usb:1"}
        fresh.close()
    finally:
        p.stop()
        for f in feeds:
            f.camera.stop()


@pytest.mark.parametrize(("limits", "code"), [(("--min-fairness", "2"), 3),
                                              (("--min-fairness", "0", "--min-total-ratio", "0"), 0)],
                         ids=["impossible", "lenient"])
def test_multicamera_bench_exit_status_follows_its_targets(trained_bundle: Path, tmp_path: Path,
                                                           limits: tuple[str, ...], code: int) -> None:
    out = tmp_path / "multicamera.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_multicamera.py"), "--bundle", str(trained_bundle),
                        "--cameras", "1,2", "--seconds", "0.3", "--rounds", "1", *limits, "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == code, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["targets_met"] is (code == 0)
    two = result["counts"]["2"]
    assert len(two["per_camera_fps"]) == 2 and two["total_fps"] > 0 and 0 < two["fairness_min_over_max"] <= 1


def test_daemon_wires_cameras_overrides_and_one_loop_per_pool_device(tmp_path: Path) -> None:
    """The service builds one feed per [[cameras]] entry (a camera asking for exactly the shared decode
    filters nothing), decodes with the permissive settings, and runs one inference loop per pool device."""
    cfg = AgentConfig(
        node_id="wiring", state_dir=tmp_path / "state", trusted_keys_dir=tmp_path / "keys",
        detect={"score_threshold": 0.4},
        cameras=[{"name": "plain", "source": "a.avi"},
                 {"name": "strict", "source": "b.avi", "detect": {"score_threshold": 0.7},
                  "zones": [[[0, 0], [1, 0], [1, 1]]]}],
        backend={"prefer": "edgetpu", "detectors": {"edgetpu": {"devices": ["usb:0", "usb:1", "usb:2"]}}})
    svc = AgentService(cfg)
    plain, strict = svc.pipeline.feeds
    assert svc.camera is plain.camera and set(svc.cameras) == {"plain", "strict"}
    assert plain.detect is None and plain.zones == []
    assert strict.detect is not None and strict.detect.score_threshold == 0.7 and len(strict.zones) == 1
    assert svc.engine_detect.score_threshold == 0.4
    assert svc.pipeline.workers == 3
    legacy = AgentService(AgentConfig(node_id="legacy", state_dir=tmp_path / "s2", trusted_keys_dir=tmp_path / "k",
                                      camera={"source": "c.avi"}, backend={"prefer": "cpu"}))
    assert [f.name for f in legacy.pipeline.feeds] == ["default"] and legacy.pipeline.workers == 1
