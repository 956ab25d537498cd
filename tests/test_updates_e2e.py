"""OTA end to end with the real agent daemon (AgentService: camera on a video file, Engine, Pipeline,
MQTT), the builder's trained YOLO-NAS bundle, a real Mosquitto and a real HTTP server.

v1 runs; v2 is published with `edge-builder publish` and hot-swapped between two frames (frame counter
continuous); v3 (golden self-test fails) and v4 (weights zeroed: same output whatever the frame) are
rolled back automatically while v2 keeps running. Timing targets (announce→active, swap gap) are
measured here for information and asserted in bench/bench_update.py.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for as _wait
from helpers_updates import Watcher, make_variant

from agent.security.bundle import Bundle

pytestmark = pytest.mark.slow


@pytest.fixture
def scene_video(tmp_path: Path, trained_bundle: Path) -> Path:
    from builder.data.synth import make_video

    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    p = tmp_path / "scene.avi"
    make_video(p, n_frames=40, size=(320, 240), fps=15, classes=classes, seed=5)
    return p


@pytest.fixture
def service(tmp_path: Path, mqtt_broker: Any, trained_bundle: Path, trained_bundle_keys: Path,
            scene_video: Path) -> Iterator[Any]:
    from agent.config import AgentConfig
    from agent.service.daemon import AgentService

    cfg = AgentConfig(
        node_id="cam-1", groups=["garden"], topic_prefix="edgefleet",
        broker={"url": mqtt_broker.url, "reconnect_min_s": 1, "reconnect_max_s": 2},
        camera={"source": str(scene_video), "loop": True, "realtime": True},
        backend={"prefer": "cpu"}, state_dir=tmp_path / "state", trusted_keys_dir=trained_bundle_keys,
        bundle=trained_bundle, state_interval_s=60,
        updates={"trial_frames": 20, "trial_seconds": 10, "read_timeout_s": 2, "connect_timeout_s": 2,
                 "clock_sync": "off"},  # this container's kernel reports an unsynchronized clock
    )
    svc = AgentService(cfg)
    frame_log: list[tuple[int, float, int | None, str | None]] = []  # (camera index, time, version, error)
    svc.pipeline.add_frame_hook(
        lambda r: frame_log.append((r.stats.index, time.monotonic(), r.model_version, r.stats.error)))
    svc.frame_log = frame_log  # type: ignore[attr-defined]
    svc.start()
    yield svc
    svc.stop()


def test_ota_hot_swap_and_automatic_rollbacks(service: Any, mqtt_broker: Any, http_server: Any,
                                              trained_bundle: Path, trained_bundle_key: Path,
                                              tmp_path: Path) -> None:
    from agent.protocol.manifest import Target
    from builder.fleet.publish import publish_bundle

    watcher = Watcher(mqtt_broker.host, mqtt_broker.port)
    try:
        v1 = Bundle.load(trained_bundle).manifest.version
        assert _wait(lambda: len(service.frame_log) >= 15, 30), "v1 never ran"
        assert {f[2] for f in service.frame_log} == {v1}

        def ship(bundle: Path) -> int:
            mark = watcher.mark()
            publish_bundle(bundle, mqtt_broker.url, Target(), trained_bundle_key, http_base=http_server.base_url,
                           upload_dir=http_server.root)
            return mark

        v2 = v1 + 1
        mark = ship(make_variant(trained_bundle, tmp_path / "v2", trained_bundle_key, v2))
        st = watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=v2, timeout=60)
        assert st["state"] == "committed", st
        downloaded = service.updater.timings["downloaded"]
        log = list(service.frame_log)
        first_v2 = next(i for i, f in enumerate(log) if f[2] == v2)
        active_s = log[first_v2][1] - downloaded
        # Zero frames dropped across the swap: the camera's frame counter is continuous and no frame failed.
        window = log[max(0, first_v2 - 30):first_v2 + 20]
        idx = [f[0] for f in window]
        assert idx == list(range(idx[0], idx[0] + len(idx))), f"frames skipped around the swap: {idx}"
        assert not [f for f in window if f[3]], "a frame failed around the swap"
        gaps = np.diff([f[1] for f in window])
        ratio = float(gaps[first_v2 - max(0, first_v2 - 30) - 1] / statistics.median(gaps))
        print(f"\nv{v2} active {active_s * 1000:.0f} ms after its download completed; "
              f"swap gap {ratio:.2f}x the median inter-frame gap")
        assert active_s < 10.0

        # v3: self-test fails → never swapped in.
        mark = ship(make_variant(trained_bundle, tmp_path / "v3", trained_bundle_key, v2 + 1, golden_bad=True))
        st = watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=v2 + 1, timeout=60)
        assert st["state"] == "rolled_back" and "self-test" in st["reason"], st
        # v4: weights zeroed (passes its own golden data, answers the same for every frame) → trial fails.
        n_before = len(service.frame_log)
        mark = ship(make_variant(trained_bundle, tmp_path / "v4", trained_bundle_key, v2 + 2, garbage=True))
        st = watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=v2 + 2, timeout=60)
        assert st["state"] == "rolled_back" and "trial failed" in st["reason"], st
        print(f"v{v2 + 2}: {st['reason']}")
        assert _wait(lambda: service.frame_log[-1][2] == v2, 5)
        log = service.frame_log[n_before:]
        versions = [f[2] for f in log]
        assert v2 + 2 in versions and v2 + 1 not in versions
        idx = [f[0] for f in log]
        assert idx == list(range(idx[0], idx[0] + len(idx))), "frames skipped during the trial/rollback"

        state = watcher.wait_state(lambda s: s["model"] and s["model"]["version"] == v2
                                   and (s.get("last_update") or {}).get("version") == v2 + 2)
        assert state["previous_model"]["version"] == v1
        assert state["last_update"]["state"] == "rolled_back"
        assert service.updater.store.installed_versions() == [v1, v2]

        # MQTT v5 commands through the daemon's own client (response topic + correlation data).
        inv = watcher.command("cam-1", {"command": "inventory"})
        assert inv["ok"] and [v["version"] for v in inv["result"]["versions"]] == [v1, v2]
        rb = watcher.command("cam-1", {"command": "rollback"})
        assert rb["ok"] and rb["result"]["running"]["version"] == v1, rb
        assert _wait(lambda: service.frame_log[-1][2] == v1, 5)
        state = watcher.wait_state(lambda s: s["model"] and s["model"]["version"] == v1)
        assert state["previous_model"]["version"] == v2
    finally:
        watcher.close()
