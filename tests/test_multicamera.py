"""One node, several cameras (issue 16): [[cameras]] config and the legacy [camera] alias, the fair scheduler
(freshest frame of the longest-waiting camera; a stalled camera never slows the others), zones, per-camera
detect overrides, topics and telemetry, a stand-in TPU pool with failover, and a hot swap across cameras."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, load_config
from agent.inference.config import DetectConfig, engine_detect


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
