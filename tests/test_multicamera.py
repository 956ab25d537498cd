"""One node, several cameras (issue 16): [[cameras]] config and the legacy [camera] alias, the fair scheduler
(freshest frame of the longest-waiting camera; a stalled camera never slows the others), zones, per-camera
detect overrides, topics and telemetry, a stand-in TPU pool with failover, and a hot swap across cameras."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.camera.capture import Camera
from agent.camera.frame import Frame, LatestFrame
from agent.config import AgentConfig, CameraConfig, ConfigError, load_config
from agent.inference.config import DetectConfig, engine_detect
from agent.inference.feeds import Feed
from agent.inference.scheduler import FairScheduler
from agent.inference.zones import in_zones, points_in_polygon
from agent.protocol.messages import Detection


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
