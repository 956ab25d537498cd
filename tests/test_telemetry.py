"""Telemetry: bounded histograms, percentiles, windows, and the message over a real broker via mosquitto_sub."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent.protocol.telemetry import STAGES, Telemetry
from agent.protocol.topics import Topics
from agent.telemetry.collector import TelemetryCollector
from agent.telemetry.histogram import LatencyHistogram
from agent.telemetry.publisher import TelemetryPublisher


def nearest_rank(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q, method="inverted_cdf"))


def test_histogram_percentiles_within_bucket_resolution() -> None:
    rng = np.random.default_rng(0)
    values = list(rng.lognormal(mean=np.log(8.0), sigma=0.6, size=5000))
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    for q, got in zip((50, 95, 99), h.percentiles((50, 95, 99)), strict=True):
        assert got == pytest.approx(nearest_rank(values, q), rel=0.006)
    s = h.summary()
    assert s.count == 5000 and s.max_ms == pytest.approx(max(values), rel=1e-3)
    assert s.mean_ms == pytest.approx(float(np.mean(values)), rel=1e-3)


def test_histogram_memory_is_bounded_and_handles_extremes() -> None:
    h = LatencyHistogram()
    n_buckets = h._counts.size
    for v in (0.0, 1e-9, 1e9, float("nan"), float("inf"), 3.0):
        h.record(v)
    assert h._counts.size == n_buckets < 2000
    assert h.count == 4  # nan/inf ignored
    assert h.summary(reset=True).count == 4
    assert h.summary().count == 0 and h.summary().p50_ms is None


def test_collector_windows_rates_and_totals() -> None:
    c = TelemetryCollector("n1", "0.1.0")
    c.snapshot()
    for _ in range(30):
        c.count("frames_captured")
    for _ in range(20):
        c.record_frame({"preprocess": 0.001, "invoke": 0.004, "postprocess": 0.0005, "end_to_end": 0.006})
    c.count("frames_dropped", 10)
    time.sleep(0.05)
    t = c.snapshot()
    assert t.counters.frames_captured == 30 and t.counters.frames_inferred == 20 and t.counters.frames_dropped == 10
    assert t.rates.camera_fps == pytest.approx(30 / t.interval_s, rel=0.05)
    assert t.latency["invoke"].count == 20 and t.latency["invoke"].p50_ms == pytest.approx(4.0, rel=0.01)
    assert set(STAGES) <= set(t.latency)
    assert t.power is None and t.rss_mb and t.rss_mb > 1
    t2 = c.snapshot()  # a new window: percentiles reset, totals kept
    assert t2.latency["invoke"].count == 0 and t2.counters.frames_inferred == 20


def test_broken_sensor_does_not_break_telemetry() -> None:
    def boom() -> None:
        raise RuntimeError("i2c bus error")

    c = TelemetryCollector("n1", "0.1.0", power=boom, temperatures=boom, throttle=boom)  # type: ignore[arg-type]
    t = c.snapshot()
    assert t.power is None and t.throttle is None


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients missing")
def test_percentiles_over_real_broker_match_induced_latencies(mqtt_broker) -> None:  # type: ignore[no-untyped-def]
    topics = Topics("edgefleet")
    topic = topics.telemetry("lat-node")
    sub = subprocess.Popen(["mosquitto_sub", "-h", mqtt_broker.host, "-p", str(mqtt_broker.port), "-t", topic,
                            "-C", "1", "-W", "30"], stdout=subprocess.PIPE, text=True)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lat-node")
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.loop_start()
    try:
        time.sleep(0.3)  # let mosquitto_sub subscribe
        collector = TelemetryCollector("lat-node", "0.1.0")
        pub = TelemetryPublisher(collector, lambda b: client.publish(topic, b, qos=1), interval_s=60)
        collector.snapshot()
        # induce a known latency mix on a real "invoke": 90 x 5 ms, 8 x 20 ms, 2 x 40 ms (sleep-timed)
        plan = [0.005] * 90 + [0.020] * 8 + [0.040] * 2
        np.random.default_rng(1).shuffle(plan)
        measured: list[float] = []
        for d in plan:
            t0 = time.perf_counter()
            time.sleep(d)
            dt = time.perf_counter() - t0
            measured.append(dt * 1000)
            collector.record_frame({"invoke": dt, "end_to_end": dt})
        sent = pub.publish_now()
        out, _ = sub.communicate(timeout=30)
    finally:
        client.loop_stop()
        client.disconnect()
        if sub.poll() is None:
            sub.kill()
    msg = Telemetry.model_validate_json(out.strip().splitlines()[0])
    assert msg.node == "lat-node" and msg.latency["invoke"].count == 100
    got = msg.latency["invoke"]
    for q, val in ((50, got.p50_ms), (95, got.p95_ms), (99, got.p99_ms)):
        assert val == pytest.approx(nearest_rank(measured, q), rel=0.01), q
    # and they are the latencies we designed (sleep overshoots by a little; buckets are ±0.5 %)
    assert 4.95 <= got.p50_ms < 8.0 and 19.8 <= got.p95_ms < 24.0 and 39.6 <= got.p99_ms < 45.0  # type: ignore[operator]
    assert json.loads(out)["latency"]["invoke"]["p99_ms"] == sent.latency["invoke"].p99_ms


def test_publisher_thread_publishes_periodically() -> None:
    got: list[bytes] = []
    ev = threading.Event()

    def publish(b: bytes) -> None:
        got.append(b)
        if len(got) >= 3:
            ev.set()

    c = TelemetryCollector("n1", "0.1.0")
    p = TelemetryPublisher(c, publish, interval_s=0.05)
    p.start()
    assert ev.wait(5)
    p.stop()
    assert not p.is_alive()
    assert all(Telemetry.model_validate_json(b).node == "n1" for b in got)


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients missing")
def test_daemon_telemetry_percentiles_match_induced_invoke_latencies(mqtt_broker, coral_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Through the whole daemon: pipeline frame hook → histograms → publisher → Mosquitto → mosquitto_sub."""
    import sys

    from agent.config import AgentConfig
    from agent.service.daemon import AgentService
    from builder.data.synth import make_video

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_telemetry import TfliteClassifierEngine

    video = tmp_path / "cam.avi"
    make_video(video, n_frames=20, size=(160, 120), fps=30, classes=["a"], seed=4)
    cfg = AgentConfig(node_id="tel-1", topic_prefix="tel", broker={"url": mqtt_broker.url},
                      camera={"source": str(video), "loop": True, "realtime": False},
                      backend={"prefer": "cpu"}, state_dir=tmp_path / "state", trusted_keys_dir=tmp_path / "k",
                      telemetry={"interval_s": 1.5, "power_source": "estimated", "hass_discovery": False})
    topic = Topics("tel").telemetry("tel-1")
    sub = subprocess.Popen(["mosquitto_sub", "-h", mqtt_broker.host, "-p", str(mqtt_broker.port), "-t", topic,
                            "-C", "3", "-W", "30"], stdout=subprocess.PIPE, text=True)
    svc = AgentService(cfg)
    svc.start()
    try:
        engine = TfliteClassifierEngine(coral_data / "mobilenet_v1_0.25_128_quant.tflite")
        engine.extra_invoke_s = [0.004] * 16 + [0.015] * 3 + [0.030]  # a 20-frame cycle
        svc.install_engine(engine)  # every frame is inferred after the telemetry window opened
        out, _ = sub.communicate(timeout=40)
    finally:
        svc.stop()
        if sub.poll() is None:
            sub.kill()
    msgs = [Telemetry.model_validate_json(line) for line in out.strip().splitlines()]
    assert len(msgs) == 3
    offset = 0
    checked = 0
    for m in msgs:
        lat = m.latency["invoke"]
        window = [t * 1000 for t in engine.invoke_times[offset:offset + lat.count]]
        offset += lat.count
        if lat.count < 20:
            continue
        for q, got in ((50, lat.p50_ms), (95, lat.p95_ms), (99, lat.p99_ms)):
            assert got == pytest.approx(nearest_rank(window, q), rel=0.01), (q, lat)
        assert 4.0 <= lat.p50_ms < 10.0 and lat.p99_ms >= 14.8  # type: ignore[operator]
        assert m.rates.inference_fps > 0 and m.counters.frames_inferred >= offset
        assert m.model_name == "mobilenet_v1_0.25_128_quant" and m.power is not None and m.power.estimated
        checked += 1
    assert checked >= 2


def test_per_camera_windows_from_feed_counters() -> None:
    """Issue 16: per-camera rates come from each camera's and feed's cumulative counters, window by window."""
    from types import SimpleNamespace

    from agent.camera.frame import CameraState
    from agent.telemetry.cameras import CameraWindows

    def feed(name: str) -> SimpleNamespace:
        cam = SimpleNamespace(frames=0, dropped=0, state=CameraState.STREAMING)
        return SimpleNamespace(name=name, camera=cam, counters=SimpleNamespace(inferred=0), device="usb:0")

    a, b = feed("a"), feed("b")
    w = CameraWindows([a, b])
    c = TelemetryCollector("n1", "0.1.0", cameras=w.snapshot)
    c.snapshot()
    a.camera.frames, a.camera.dropped, a.counters.inferred = 30, 10, 20
    b.camera.frames, b.camera.state, b.device = 5, CameraState.STALLED, "cpu:1t"
    for _ in range(20):
        w.record("a", 0.004, 0.010)
    w.record("nobody", 1.0, 1.0)  # an unknown camera is ignored
    time.sleep(0.05)
    t = c.snapshot()
    ca, cb = t.cameras["a"], t.cameras["b"]
    assert ca.inference_fps == pytest.approx(20 / t.interval_s, rel=0.05) and ca.frames_dropped == 10
    assert ca.latency is not None and ca.latency.count == 20 and ca.latency.p50_ms == pytest.approx(4.0, rel=0.01)
    assert (cb.state, cb.device, cb.inference_fps) == ("stalled", "cpu:1t", 0.0)
    assert c.snapshot().cameras["a"].inference_fps == 0  # the next window starts from the new totals


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients missing")
def test_daemon_counts_real_detections_per_frame(mqtt_broker, trained_bundle, trained_bundle_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real detector (the trained bundle) on a synthetic scene through the whole daemon: Telemetry.detections
    counts, frame for frame, the detections each frame's result carries (what a second frame hook records)."""
    from agent.config import AgentConfig
    from agent.inference.engine import Engine
    from agent.inference.frames import FrameResult
    from agent.security.bundle import Bundle
    from agent.security.signing import Keyring
    from agent.service.daemon import AgentService
    from builder.data.synth import make_video
    from builder.rollout.gates import measure
    from builder.rollout.link import RolloutLink

    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    video = tmp_path / "cam.avi"
    make_video(video, n_frames=20, size=(320, 240), fps=20, classes=classes, seed=5)
    cfg = AgentConfig(node_id="det-1", topic_prefix="tel", broker={"url": mqtt_broker.url},
                      camera={"source": str(video), "loop": True, "realtime": False},
                      backend={"prefer": "cpu"}, detect={"score_threshold": 0.3}, state_dir=tmp_path / "state",
                      trusted_keys_dir=tmp_path / "k",
                      telemetry={"interval_s": 1.0, "power_source": "estimated", "hass_discovery": False})
    sub = subprocess.Popen(["mosquitto_sub", "-h", mqtt_broker.host, "-p", str(mqtt_broker.port), "-t",
                            Topics("tel").telemetry("det-1"), "-C", "3", "-W", "40"], stdout=subprocess.PIPE, text=True)
    seen: list[list[str]] = []  # each inferred frame's detected class names

    def record(r: FrameResult) -> None:
        if r.stats.error is None:
            seen.append([d.class_name for d in r.detections])

    link = RolloutLink(mqtt_broker.url, Topics("tel")).start()  # what a rollout's detection gate reads
    svc = AgentService(cfg)
    svc.start()
    bundle = Bundle.load(trained_bundle, Keyring.load(trained_bundle_keys))
    try:
        svc.pipeline.add_frame_hook(record)
        svc.install_engine(Engine.load(bundle, cfg))
        out, _ = sub.communicate(timeout=60)
    finally:
        svc.stop()
        link.stop()
        if sub.poll() is None:
            sub.kill()
    final = svc.telemetry.collector.snapshot().detections  # the daemon is stopped: no frame in flight
    assert final is not None and final.frames_since_start == len(seen) > 0
    assert final.total_since_start == sum(len(f) for f in seen) > 0, "the trained model should see the shapes"
    windows = [m.detections for m in map(Telemetry.model_validate_json, out.strip().splitlines())]
    assert len(windows) == 3 and all(w is not None for w in windows)
    counted = [w for w in windows if w is not None and w.frames > 0]
    assert counted and sum(w.total for w in counted) > 0
    for w in counted:
        assert w.model_version == bundle.manifest.version and w.per_frame == pytest.approx(w.total / w.frames, abs=1e-4)
        assert sum(w.by_class.values()) == w.total and set(w.by_class) <= set(classes)
        assert 0 <= w.empty_frames <= w.frames and w.max_per_frame <= max(len(f) for f in seen)
    # The rollout runner's link heard the same messages: the gate's detections per frame is theirs.
    heard = link.snapshot("det-1")
    assert heard is not None and len(heard.samples) >= 3
    per_frame = measure(heard.samples, [], bundle.manifest.version, 0, time.time() + 1).detections_per_frame
    assert per_frame == pytest.approx(sum(w.total for w in counted) / sum(w.frames for w in counted), rel=0.05)


def test_detection_tally_windows_by_model_version() -> None:
    """A window spanning a model swap reports the newest model's frames only; totals never reset."""
    from agent.protocol.messages import Detection
    from agent.telemetry.detections import DetectionTally

    def det(name: str) -> Detection:
        return Detection(box=(0, 0, 1, 1), class_id=0, class_name=name, score=0.9)

    c = TelemetryCollector("n1", "0.1.0")
    assert c.snapshot().detections is not None and c.snapshot().detections.per_frame is None  # type: ignore[union-attr]
    for dets, version in (([det("a")] * 3, 1), ([], 1), ([det("a"), det("b")], 2), ([], 2), ([det("b")], 2)):
        c.record_frame({"invoke": 0.001}, detections=dets, model_version=version)
    d = c.snapshot().detections
    assert d is not None and (d.model_version, d.frames, d.total, d.empty_frames, d.max_per_frame) == (2, 3, 3, 1, 2)
    assert d.per_frame == 1.0 and d.by_class == {"a": 1, "b": 2}
    assert (d.frames_since_start, d.total_since_start) == (5, 6)
    c.record_frame({"invoke": 0.001})  # a caller without detections: timed, not counted
    d = c.snapshot().detections
    assert d is not None and (d.frames, d.frames_since_start) == (0, 5) and c.totals["frames_inferred"] == 6
    t = DetectionTally()
    for i in range(300):  # by_class stays bounded whatever the labels
        t.record([det(f"c{i}")], 1)
    assert len(t.snapshot().by_class) == 257 and t.snapshot().frames == 0
