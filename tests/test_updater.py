"""The update state machine through a real broker and a real HTTP server, with real TFLite models.

Every rejection must leave the running model untouched and the frame loop uninterrupted.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers_updates import (
    MOBILENET_224,
    NodeHarness,
    Watcher,
    frame_result,
    make_bundle,
    publish,
    write_video,
)

from agent.protocol.manifest import Target
from agent.protocol.messages import Announcement
from agent.security.signing import SigningKey
from agent.updates.store import UpdatesConfig
from builder.fleet.publish import make_announcement, mqtt_publish


@dataclass
class Fleet:
    tmp: Path
    key: SigningKey
    key_path: Path
    node: NodeHarness
    watcher: Watcher
    broker: Any
    http: Any

    def bundle(self, version: int, **kw: Any) -> Path:
        return make_bundle(self.tmp / f"bundle-v{version}-{len(kw)}", kw.pop("key", self.key), version, **kw)

    def publish(self, bundle: Path, target: str = "all") -> int:
        mark = self.watcher.mark()
        publish(bundle, self.broker.url, self.key_path, self.http.root, self.http.base_url, target)
        return mark

    def announce_raw(self, ann: Announcement, topic: str = "edgefleet/announce/all") -> int:
        mark = self.watcher.mark()
        mqtt_publish(self.broker.url, topic, ann.model_dump_json().encode())
        return mark

    def running(self) -> int | None:
        return self.node.loop.engine.model_version

    def assert_undisturbed(self, version: int) -> None:
        """The node still runs `version`, frames keep coming, none failed, indices continuous."""
        before = self.node.loop.index
        self.node.loop.wait_frames(5)
        assert self.node.loop.index >= before + 5, "frames stopped"
        assert self.running() == version
        idx = [f[0] for f in self.node.loop.log]
        assert idx == list(range(len(idx))), "frame counter not continuous"
        assert not [f for f in self.node.loop.log if f[3] is not None and f[2] == version], "frames failed"


def make_fleet(tmp_path: Path, broker: Any, http: Any, config: UpdatesConfig | None = None,
               state_dir: Path | None = None) -> Fleet:
    key = SigningKey.generate()
    (tmp_path / "keys").mkdir()
    pub = key.save(tmp_path / "keys" / "fleet.key")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(pub, trusted / "fleet.pub")
    v1 = make_bundle(tmp_path / "bundle-v1", key, 1)
    video = write_video(tmp_path / "camera.avi")
    kw: dict[str, Any] = {"config": config} if config else {}
    node = NodeHarness(state_dir=state_dir or tmp_path / "state", keys_dir=trusted, broker_host=broker.host,
                       broker_port=broker.port, video=video, initial_bundle=v1, **kw).start()
    watcher = Watcher(broker.host, broker.port)
    node.loop.wait_frames(3)
    return Fleet(tmp_path, key, tmp_path / "keys" / "fleet.key", node, watcher, broker, http)


@pytest.fixture
def fleet(tmp_path: Path, mqtt_broker: Any, http_server: Any, coral_data: Path) -> Iterator[Fleet]:
    f = make_fleet(tmp_path, mqtt_broker, http_server)
    yield f
    f.node.stop()
    f.watcher.close()


def test_v2_hot_swap_commit_and_node_state(fleet: Fleet) -> None:
    mark = fleet.publish(fleet.bundle(2))
    done = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=2)
    assert done["state"] == "committed", done
    states = [u["state"] for u in fleet.watcher.updates[mark:]]
    for s in ("verifying", "downloading", "activating", "trial", "committed"):
        assert s in states
    assert fleet.node.loop.seen_versions == [1, 2]
    fleet.assert_undisturbed(2)
    st = fleet.watcher.wait_state(lambda s: s["model"]["version"] == 2 and (s.get("last_update") or {}).get("state") == "committed")
    assert st["previous_model"]["version"] == 1
    persisted = json.loads((fleet.node.store.state_path).read_text())
    assert persisted["current"]["version"] == 2 and persisted["high_water"] == 2 and persisted["pending"] is None


def test_selftest_failure_and_garbage_model_roll_back(fleet: Fleet) -> None:
    fleet.watcher.wait_update({"committed"}, fleet.publish(fleet.bundle(2)), version=2)
    # v3: the golden self-test fails → never swapped in.
    mark = fleet.publish(fleet.bundle(3, golden="bad"))
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=3)
    assert st["state"] == "rolled_back" and "self-test" in st["reason"], st
    assert 3 not in fleet.node.loop.seen_versions
    fleet.assert_undisturbed(2)
    # v4: passes its own golden test but answers the same for every frame → rolled back during the trial.
    mark = fleet.publish(fleet.bundle(4, garbage=True))
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=4)
    assert st["state"] == "rolled_back" and "trial failed" in st["reason"] and "degenerate" in st["reason"], st
    assert fleet.node.loop.seen_versions == [1, 2, 4, 2]
    fleet.assert_undisturbed(2)
    assert fleet.node.store.installed_versions() == [1, 2]
    node_state = fleet.watcher.wait_state(lambda s: (s.get("last_update") or {}).get("version") == 4)
    assert node_state["model"]["version"] == 2 and node_state["last_update"]["state"] == "rolled_back"


def _bad_signature(f: Fleet) -> Announcement:
    b = f.bundle(2)
    data = (b / "manifest.json").read_bytes()
    ann = make_announcement(data, f.key, f.http.base_url + "/x/")
    tampered = data.replace(b'"version": 2', b'"version": 9')
    return ann.model_copy(update={"manifest_b64": base64.b64encode(tampered).decode()})


def _unknown_key(f: Fleet) -> Announcement:
    other = SigningKey.generate()
    data = (f.bundle(2) / "manifest.json").read_bytes()
    return make_announcement(data, other, f.http.base_url + "/x/")


def _signed(f: Fleet, bundle: Path, base: str | None = None) -> Announcement:
    return make_announcement((bundle / "manifest.json").read_bytes(), f.key, base or f.http.base_url + "/x/")


REJECTIONS = {
    "bad signature": (lambda f: f.announce_raw(_bad_signature(f)), "rejected", "bad signature"),
    "unknown key": (lambda f: f.announce_raw(_unknown_key(f)), "rejected", "unknown signing key"),
    # (`edge-builder publish` would set a fresh expiry: announce the expired manifest as signed.)
    "expired": (lambda f: f.announce_raw(_signed(f, f.bundle(2, expires=datetime.now(UTC) - timedelta(hours=1)))),
                "rejected", "expired"),
    "no expiry": (lambda f: f.announce_raw(_signed(f, f.bundle(2, no_expiry=True))), "rejected", "no expiry"),
    "wrong target": (lambda f: f.announce_raw(_signed(f, f.bundle(2, target=Target(kind="node", value="other")))),
                     "rejected", "targets node:other"),
    "agent too old": (lambda f: f.publish(f.bundle(2, min_agent_version="99.0")), "rejected", "needs agent 99.0"),
    "declared size over limit": (lambda f: f.announce_raw(_signed(f, f.bundle(2, declared_size=10 << 30))),
                                 "rejected", "over the limit"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejected_before_download(fleet: Fleet, case: str) -> None:
    action, state, text = REJECTIONS[case]
    mark = action(fleet)
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark)
    assert st["state"] == state and text in st["reason"], st
    assert not [r for r in fleet.http.requests], "nothing may be downloaded for a rejected announcement"
    fleet.assert_undisturbed(1)
    assert fleet.node.store.installed_versions() == [1]


def test_replayed_or_older_version_rejected(fleet: Fleet) -> None:
    fleet.watcher.wait_update({"committed"}, fleet.publish(fleet.bundle(2)), version=2)
    requests_before = len(fleet.http.requests)
    # A validly signed v1 (older than the high-water mark 2): a downgrade.
    mark = fleet.announce_raw(_signed(fleet, fleet.bundle(1)))
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark)
    assert st["state"] == "rejected" and "not above the high-water mark 2" in st["reason"], st
    # v3 rolled back, then its announcement replayed (as a broker does with retained messages).
    v3 = fleet.bundle(3, golden="bad")
    fleet.watcher.wait_update({"rolled_back"}, fleet.publish(v3), version=3)
    mark = fleet.announce_raw(_signed(fleet, v3))
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark)
    assert st["state"] == "rejected" and "replay" in st["reason"], st
    assert len(fleet.http.requests) == requests_before + 3  # only v3's three files, once
    fleet.assert_undisturbed(2)


def _serve(f: Fleet, bundle: Path, fault: str | None = None, file: str = "model_quant.tflite") -> int:
    from builder.fleet.publish import upload

    dst = upload(_load(bundle), (bundle / "manifest.json").read_bytes(), (bundle / "manifest.sig").read_bytes(),
                 f.http.root)
    rel = f"{dst.relative_to(f.http.root)}/{file}"
    if fault:
        f.http.faults[rel] = fault
    return f.announce_raw(_signed(f, bundle, f"{f.http.base_url}/{dst.relative_to(f.http.root)}/"))


def _load(bundle: Path) -> Any:
    from agent.security.bundle import Bundle

    return Bundle.load(bundle)


def _sha_mismatch(f: Fleet) -> int:
    b = f.bundle(2)
    mark = _serve(f, b)  # races the download only if we modify after; so modify the source first:
    return mark


DOWNLOAD_FAILURES = {
    "http 404": ("404", "HTTP 404"),
    "http 500": ("500", "HTTP 500"),
    "truncated": ("truncate", "truncated"),
    "too slow": ("slow", "timeout"),
}


@pytest.mark.parametrize("case", list(DOWNLOAD_FAILURES))
def test_download_failures(fleet: Fleet, case: str) -> None:
    fault, text = DOWNLOAD_FAILURES[case]
    fleet.http.set_slow_seconds(1.5)  # > read timeout 1 s of the harness config
    mark = _serve(fleet, fleet.bundle(2), fault)
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=2, timeout=30)
    assert st["state"] == "failed" and text in st["reason"], st
    fleet.assert_undisturbed(1)
    assert fleet.node.store.installed_versions() == [1]


def test_sha256_mismatch_and_oversize_file(fleet: Fleet) -> None:
    # The server holds different bytes of the same size: the digest computed while streaming catches it.
    b = fleet.bundle(2)
    from builder.fleet.publish import upload

    dst = upload(_load(b), (b / "manifest.json").read_bytes(), (b / "manifest.sig").read_bytes(), fleet.http.root)
    model = dst / "model_quant.tflite"
    raw = bytearray(model.read_bytes())
    raw[-100:] = bytes(100)
    model.write_bytes(bytes(raw))
    mark = fleet.announce_raw(_signed(fleet, b, f"{fleet.http.base_url}/{dst.relative_to(fleet.http.root)}/"))
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=2)
    assert st["state"] == "failed" and "sha256 mismatch" in st["reason"], st
    # The server holds a bigger file than the manifest declares: the download stops at the declared size.
    model.write_bytes(bytes(raw) + b"x" * 4096)
    mark = fleet.announce_raw(_signed(fleet, b, f"{fleet.http.base_url}/{dst.relative_to(fleet.http.root)}/"))
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=2)
    assert st["state"] == "failed" and "declares" in st["reason"], st
    fleet.assert_undisturbed(1)


ACTIVATION_FAILURES: dict[str, tuple[dict[str, Any], str]] = {
    "corrupt tflite": ({"corrupt": True}, "cannot load model"),
    "wrong input shape": ({"model": MOBILENET_224, "input_size": 128}, "self-test inference failed"),
}


@pytest.mark.parametrize("case", list(ACTIVATION_FAILURES))
def test_activation_failures_roll_back(fleet: Fleet, case: str) -> None:
    kw, text = ACTIVATION_FAILURES[case]
    mark = fleet.publish(fleet.bundle(2, **kw))
    st = fleet.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=2)
    assert st["state"] == "rolled_back" and text in st["reason"], st
    fleet.assert_undisturbed(1)
    assert fleet.node.store.installed_versions() == [1]


def test_commands_rollback_pin_inventory(fleet: Fleet) -> None:
    fleet.watcher.wait_update({"committed"}, fleet.publish(fleet.bundle(2)), version=2)
    inv = fleet.watcher.command("node-1", {"command": "inventory"})
    assert inv["ok"] and [v["version"] for v in inv["result"]["versions"]] == [1, 2]
    assert inv["result"]["current"]["version"] == 2
    bad = fleet.watcher.command("node-1", {"command": "selfdestruct"})
    assert not bad["ok"] and "bad command" in bad["error"]
    rb = fleet.watcher.command("node-1", {"command": "rollback"})
    assert rb["ok"], rb
    assert rb["result"]["running"]["version"] == 1 and fleet.running() == 1
    pin = fleet.watcher.command("node-1", {"command": "pin", "version": 2})
    assert pin["ok"] and pin["result"]["pinned"] == 2 and fleet.running() == 2
    mark = fleet.publish(fleet.bundle(3))
    st = fleet.watcher.wait_update({"committed", "rejected"}, mark, version=None)
    assert st["state"] == "rejected" and "pinned" in st["reason"]
    missing = fleet.watcher.command("node-1", {"command": "pin", "version": 7})
    assert not missing["ok"] and "not on disk" in missing["error"]
    unpin = fleet.watcher.command("node-1", {"command": "pin"})
    assert unpin["ok"] and unpin["result"]["pinned"] is None
    status = fleet.watcher.command("node-1", {"command": "status"})
    assert status["result"]["running"]["version"] == 2
    fleet.assert_undisturbed(2)


def test_keeps_k_versions(tmp_path: Path, mqtt_broker: Any, http_server: Any, coral_data: Path) -> None:
    cfg = UpdatesConfig(keep_versions=2, trial_frames=5, trial_seconds=5, read_timeout_s=1, connect_timeout_s=1)
    f = make_fleet(tmp_path, mqtt_broker, http_server, cfg)
    try:
        for v in (2, 3, 4):
            st = f.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, f.publish(f.bundle(v)),
                                       version=v)
            assert st["state"] == "committed", st
        assert f.node.updater.wait_idle(10)  # pruning follows the committed status
        assert f.node.store.installed_versions() == [3, 4]
        state = f.node.store.load_state()
        assert [r.version for r in state.committed] == [3, 4] and state.previous and state.previous.version == 3
    finally:
        f.node.stop()
        f.watcher.close()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("fault", ["read-only", "disk full"])
def test_storage_faults_keep_old_model(tmp_path: Path, mqtt_broker: Any, http_server: Any, coral_data: Path,
                                       fault: str) -> None:
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "1200k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    f = None
    try:
        cfg = UpdatesConfig(trial_frames=5, trial_seconds=5, read_timeout_s=1, connect_timeout_s=1, min_free_bytes=0)
        f = make_fleet(tmp_path, mqtt_broker, http_server, cfg, state_dir=mnt)
        if fault == "read-only":
            assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
            text = "read-only"
        else:
            # Fill the disk so the pre-check passes only by a hair... then the write runs out of room.
            free = shutil.disk_usage(mnt).free
            (mnt / "filler").write_bytes(b"\0" * max(0, free - 600_000))
            text = "disk"
        mark = f.publish(f.bundle(2))
        st = f.watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=2)
        assert st["state"] == "failed" and text in st["reason"], st
        f.assert_undisturbed(1)
    finally:
        if f is not None:
            f.node.stop()
            f.watcher.close()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- the trial monitor and the golden comparison, on their own ------------------------------------
def _monitor(**cfg: Any) -> Any:
    from agent.updates.trial import TrialMonitor

    eng = object()
    return eng, TrialMonitor(eng, 2, UpdatesConfig(trial_frames=10, **cfg), baseline_ms=10.0)


def test_trial_nan_output_fails_at_once() -> None:
    import numpy as np

    eng, mon = _monitor()
    mon.feed(frame_result(latency_s=0.01, engine=eng, outputs=[np.array([0.1, 0.2], np.float32)]))
    mon.feed(frame_result(latency_s=0.01, engine=eng, outputs=[np.array([np.nan, 0.2], np.float32)]))
    assert mon.done.is_set() and "NaN" in (mon.verdict() or "")


def test_trial_inference_error_fails() -> None:
    eng, mon = _monitor(trial_max_error_frames=1)
    mon.feed(frame_result(latency_s=0.01, engine=eng, error="EngineError: boom"))
    assert not mon.done.is_set()
    mon.feed(frame_result(latency_s=0.01, engine=eng, error="EngineError: boom"))
    assert "inference error" in (mon.verdict() or "")


def test_trial_latency_regression_and_pass() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    eng, slow = _monitor()
    eng2, fine = _monitor()
    for _ in range(10):
        x = rng.integers(0, 255, (1, 4, 4, 3), dtype=np.uint8)
        out = [rng.integers(0, 255, (1, 10), dtype=np.uint8)]
        slow.feed(frame_result(latency_s=0.050, engine=eng, outputs=out, image=x))  # 50 ms vs 10 ms before
        fine.feed(frame_result(latency_s=0.012, engine=eng2, outputs=out, image=x))
    assert slow.done.is_set() and "latency regression" in (slow.verdict() or "")
    assert fine.verdict() is None


def test_trial_matches_by_engine_or_version() -> None:
    eng, mon = _monitor()
    assert mon.matches(frame_result(latency_s=0, engine=eng))
    assert not mon.matches(frame_result(latency_s=0, engine=object(), version=2))
    assert mon.matches(frame_result(latency_s=0, version=2)) and not mon.matches(frame_result(latency_s=0, version=1))


def test_golden_accepts_flat_concatenation_of_outputs(tmp_path: Path) -> None:
    import numpy as np

    from agent.updates.errors import ActivationFailed
    from agent.updates.golden import match_outputs

    outs = [np.arange(6, dtype=np.uint8).reshape(1, 2, 3), np.arange(4, dtype=np.uint8).reshape(1, 4)]
    flat = np.concatenate([o.reshape(-1) for o in outs])
    got = match_outputs(outs, flat)
    assert got is not None and np.array_equal(got, flat)
    assert match_outputs(outs, np.zeros(3)) is None
    assert ActivationFailed  # the error type run_golden raises


def test_stop_during_trial_does_not_commit(tmp_path: Path, mqtt_broker: Any, http_server: Any,
                                           coral_data: Path) -> None:
    """Shutting down mid-trial leaves the update uncommitted; the next start rolls it back."""
    cfg = UpdatesConfig(trial_frames=10_000, trial_seconds=60, read_timeout_s=1, connect_timeout_s=1)
    f = make_fleet(tmp_path, mqtt_broker, http_server, cfg)
    try:
        f.watcher.wait_update({"trial"}, f.publish(f.bundle(2)), version=2)
    finally:
        f.node.stop()
        f.watcher.close()
    st = f.node.store.load_state()
    assert st.pending is not None and st.pending.phase == "trial" and st.current and st.current.version == 1
    again = f.node.store.recover("node-1")
    assert again.current and again.current.version == 1 and again.pending is None
    assert f.node.store.installed_versions() == [1]
