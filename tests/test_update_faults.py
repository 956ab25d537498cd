"""Crash safety: SIGKILL the agent process at every update state; every restart runs a committed model.

The agent is a real subprocess (tests/helpers_updates.py `agent`: real store, updater, paho client and
TFLite engine on a real video) talking to a real Mosquitto and a real HTTP server. Kill points: at each
state transition (in-process SIGKILL, so the moment is exact) and at random moments (external SIGKILL).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_updates import Watcher, make_bundle, publish, write_video

from agent.security.bundle import Bundle
from agent.security.signing import Keyring, SigningKey
from agent.updates.store import ModelStore
from builder.fleet.publish import mqtt_publish

pytestmark = pytest.mark.slow

HELPER = Path(__file__).with_name("helpers_updates.py")

# (kill point, bundle kind): each state of the machine, twice, plus kills at random moments.
PLAN: list[tuple[str, str]] = [
    ("verifying:1", "ok"), ("downloading:1", "slow"), ("downloading:2", "slow"), ("activating:1", "ok"),
    ("trial:1", "ok"), ("committed:1", "ok"), ("rolled_back:1", "bad"), ("failed:1", "404"),
] * 2 + [("random", "slow")] * 6


def _start(tmp: Path, broker: Any, trusted: Path, video: Path, v1: Path, kill_at: str | None) -> subprocess.Popen[bytes]:
    cfg = {"state_dir": str(tmp / "state"), "keys_dir": str(trusted), "host": broker.host, "port": broker.port,
           "video": str(video), "initial_bundle": str(v1), "kill_at": kill_at, "trial_frames": 8}
    path = tmp / "agent.json"
    path.write_text(json.dumps(cfg))
    return subprocess.Popen([sys.executable, str(HELPER), "agent", str(path)], stdout=subprocess.DEVNULL,
                            stderr=(tmp / "agent.log").open("ab"))


def _check_committed(store: ModelStore, ring: Keyring, watcher: Watcher, proc: subprocess.Popen[bytes]) -> int:
    """The restarted agent runs frames on a version that the store says is committed and that verifies."""
    st = watcher.wait_state(lambda s: s.get("reason") == f"pid {proc.pid}" and s.get("model"), timeout=20)
    running = st["model"]["version"]
    state = store.load_state()
    assert state.pending is None, "an uncommitted update survived the restart"
    assert state.current is not None and state.current.version == running
    assert running in [r.version for r in state.committed]
    Bundle.load(store.version_dir(running), ring)  # signature + every sha256
    return running


def test_sigkill_at_every_update_state(tmp_path: Path, mqtt_broker: Any, http_server: Any, coral_data: Path) -> None:
    key = SigningKey.generate()
    key_path = tmp_path / "fleet.key"
    pub = key.save(key_path)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(pub, trusted / "fleet.pub")
    ring = Keyring.load(trusted)
    v1 = make_bundle(tmp_path / "v1", key, 1)
    video = write_video(tmp_path / "cam.avi")
    store = ModelStore(tmp_path / "state" / "models")
    watcher = Watcher(mqtt_broker.host, mqtt_broker.port)
    http_server.set_slow_seconds(0.05)
    rng = random.Random(6)
    good = {1}
    kills = 0
    proc = _start(tmp_path, mqtt_broker, trusted, video, v1, None)
    t0 = time.monotonic()
    try:
        running = _check_committed(store, ring, watcher, proc)
        for i, (kill_at, kind) in enumerate(PLAN):
            version = i + 2
            # Restart with this trial's kill point (the previous process is still running or just died).
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc = _start(tmp_path, mqtt_broker, trusted, video, v1, None if kill_at == "random" else kill_at)
            running = _check_committed(store, ring, watcher, proc)
            assert running in good
            bundle = make_bundle(tmp_path / f"v{version}", key, version, golden="bad" if kind == "bad" else "ok")
            res = publish(bundle, mqtt_broker.url, key_path, http_server.root, http_server.base_url)
            rel = f"{res.name}/{version}/model_quant.tflite"
            if kind in ("slow", "404"):
                http_server.faults[rel] = "slow" if kind == "slow" else "404"
            if kill_at == "random":
                time.sleep(rng.uniform(0.0, 1.5))
                proc.send_signal(signal.SIGKILL)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"trial {i} ({kill_at}, {kind}): the kill point was never reached")
            assert rc == -signal.SIGKILL, f"trial {i}: agent exited with {rc}, see {tmp_path / 'agent.log'}"
            kills += 1
            state = store.load_state()
            if state.current:
                good.add(state.current.version)  # committed before the kill (kill after commit)
            # Clear the retained announcement so the next trial starts from a quiet fleet.
            mqtt_publish(mqtt_broker.url, "edgefleet/announce/all", b"")
        # The final restart also runs a committed model.
        proc = _start(tmp_path, mqtt_broker, trusted, video, v1, None)
        running = _check_committed(store, ring, watcher, proc)
        assert running in good
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()
    assert kills >= 20
    print(f"\n{kills} SIGKILL trials in {time.monotonic() - t0:.0f} s; committed versions seen {sorted(good)}")


# -- the real daemon: `edge-agent run`, killed from outside as each state is observed on MQTT ---------
DAEMON_PLAN: list[tuple[str, str]] = [
    ("verifying", "ok"), ("downloading", "slow"), ("activating", "ok"), ("trial", "ok"), ("committed", "ok"),
    ("rolled_back", "bad"), ("failed", "404"), ("random", "ok"), ("random", "slow"), ("random", "ok"),
]


def _daemon(tmp: Path, broker: Any, bundle: Path, keys: Path, video: Path) -> subprocess.Popen[bytes]:
    cfg = tmp / "agent.toml"
    cfg.write_text(f"""
node_id = "cam-k"
topic_prefix = "edgefleet"
state_dir = "{tmp / 'state'}"
trusted_keys_dir = "{keys}"
bundle = "{bundle}"
[broker]
url = "{broker.url}"
reconnect_min_s = 0.5
reconnect_max_s = 1.0
[camera]
source = "{video}"
loop = true
realtime = true
[backend]
prefer = "cpu"
[updates]
clock_sync = "off"  # the test machine's kernel may report an unsynchronized clock
trial_frames = 15
trial_seconds = 5.0
read_timeout_s = 2.0
connect_timeout_s = 1.0
""")
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=(tmp / "daemon.log").open("ab"))


def test_sigkill_real_daemon_at_update_states(tmp_path: Path, mqtt_broker: Any, http_server: Any,
                                              trained_bundle: Path, trained_bundle_key: Path,
                                              trained_bundle_keys: Path) -> None:
    from datetime import UTC, datetime

    from helpers_updates import make_variant

    from builder.data.synth import make_video

    m1 = Bundle.load(trained_bundle).manifest
    video = tmp_path / "scene.avi"
    make_video(video, n_frames=30, size=(320, 240), fps=15, classes=m1.class_names, seed=9)
    ring = Keyring.load(trained_bundle_keys)
    store = ModelStore(tmp_path / "state" / "models")
    watcher = Watcher(mqtt_broker.host, mqtt_broker.port)
    http_server.set_slow_seconds(0.1)
    rng = random.Random(7)
    good = {m1.version}
    proc: subprocess.Popen[bytes] | None = None

    def restart_and_check() -> subprocess.Popen[bytes]:
        started = datetime.now(UTC)
        p = _daemon(tmp_path, mqtt_broker, trained_bundle, trained_bundle_keys, video)
        st = watcher.wait_state(lambda s: s.get("node") == "cam-k" and s.get("model")
                                and datetime.fromisoformat(s["ts"]) > started and s["status"] == "running",
                                timeout=30)
        state = store.load_state()
        assert state.pending is None, "an uncommitted update survived the restart"
        assert state.current is not None and state.current.version == st["model"]["version"]
        assert state.current.version in good and state.current.version in [r.version for r in state.committed]
        Bundle.load(store.version_dir(state.current.version), ring)
        return p

    try:
        for i, (kill_at, kind) in enumerate(DAEMON_PLAN):
            proc = restart_and_check()
            version = m1.version + 1 + i
            b = make_variant(trained_bundle, tmp_path / f"v{version}", trained_bundle_key, version,
                             golden_bad=kind == "bad")
            if kind in ("slow", "404"):
                http_server.faults[f"{m1.name}/{version}/{m1.models.cpu}"] = kind
            mark = watcher.mark()
            publish(b, mqtt_broker.url, trained_bundle_key, http_server.root, http_server.base_url)
            if kill_at == "random":
                time.sleep(rng.uniform(0.0, 2.0))
            else:
                watcher.wait_update({kill_at}, mark, version=version, timeout=60)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
            state = store.load_state()
            if state.current is not None:
                good.add(state.current.version)
            mqtt_publish(mqtt_broker.url, "edgefleet/announce/all", b"")
        proc = restart_and_check()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()
    print(f"\n{len(DAEMON_PLAN)} SIGKILLs of edge-agent run; committed versions seen {sorted(good)}")
