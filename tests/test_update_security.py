"""Update security (issue 13: TUF/Mender rules) against real parts: the updater with the builder's trained
bundle, a real TFLite engine on a real video, real Mosquitto and a real HTTP server.

Freshness (expiry required, judged only by a synchronized clock), evidence before commit (a trial with
no frames never commits), reserved bundle paths, and a flood of bad announcements (bounded memory and
queue, no disk write).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers_updates import NodeHarness, Watcher, make_variant, synced_clock, unsynced_clock, write_video

from agent.protocol.manifest import FileEntry
from agent.protocol.messages import Announcement
from agent.security.signing import SigningKey
from agent.system.clock import ClockStatus
from agent.updates.store import UpdatesConfig
from builder.fleet.publish import make_announcement, upload

FINAL = {"committed", "rolled_back", "failed", "rejected"}
SOON = datetime.now(UTC) + timedelta(days=1)


class Clock:
    """An injectable clock-sync source the test flips."""

    def __init__(self, status: ClockStatus) -> None:
        self.status = status

    def __call__(self) -> ClockStatus:
        return self.status


@dataclass
class Node:
    tmp: Path
    harness: NodeHarness
    watcher: Watcher
    http: Any
    key: SigningKey
    key_path: Path
    src: Path

    def variant(self, version: int, **kw: Any) -> Path:
        return make_variant(self.src, self.tmp / f"v{version}-{len(os.listdir(self.tmp))}", self.key_path, version,
                            **kw)

    def announcement(self, bundle: Path) -> Announcement:
        """Upload `bundle` to the HTTP server as signed, and the announcement for it (not sent)."""
        from agent.security.bundle import Bundle

        data = (bundle / "manifest.json").read_bytes()
        dst = upload(Bundle.load(bundle), data, (bundle / "manifest.sig").read_bytes(), self.http.root)
        return make_announcement(data, self.key, f"{self.http.base_url}/{dst.relative_to(self.http.root)}/")

    def announce(self, ann: Announcement, topic: str = "edgefleet/announce/all") -> int:
        mark = self.watcher.mark()
        self.harness.updater.on_announcement(ann.model_dump_json().encode(), topic)
        return mark

    def running(self) -> int | None:
        return self.harness.loop.engine.model_version

    def stop(self) -> None:
        self.harness.stop()
        self.watcher.close()


@pytest.fixture
def make_node(tmp_path: Path, mqtt_broker: Any, http_server: Any, trained_bundle: Path, trained_bundle_key: Path,
              trained_bundle_keys: Path) -> Iterator[Any]:
    made: list[Node] = []
    video = write_video(tmp_path / "camera.avi")

    def make(config: UpdatesConfig | None = None, clock: Any = synced_clock, name: str = "n") -> Node:
        cfg = config or UpdatesConfig(trial_frames=10, trial_seconds=3, trial_max_wait_s=10, read_timeout_s=2,
                                      connect_timeout_s=1, total_timeout_s=20)
        harness = NodeHarness(state_dir=tmp_path / f"state-{name}", keys_dir=trained_bundle_keys,
                              broker_host=mqtt_broker.host, broker_port=mqtt_broker.port, video=video,
                              initial_bundle=trained_bundle, config=cfg, clock=clock).start()
        harness.loop.wait_frames(3)
        work = tmp_path / f"bundles-{name}"
        work.mkdir()
        node = Node(work, harness, Watcher(mqtt_broker.host, mqtt_broker.port), http_server,
                    SigningKey.load(trained_bundle_key), trained_bundle_key, trained_bundle)
        made.append(node)
        return node

    yield make
    for n in made:
        n.stop()


# -- freshness ---------------------------------------------------------------------------------------
def test_expired_announcement_refused_before_download(make_node: Any) -> None:
    node = make_node()
    mark = node.announce(node.announcement(node.variant(2, expires=datetime.now(UTC) - timedelta(minutes=1))))
    st = node.watcher.wait_update(FINAL, mark, version=2)
    assert st["state"] == "rejected" and "expired" in st["reason"], st
    assert not node.http.requests and node.running() == 1


def test_announcement_without_expiry_refused_by_default_accepted_when_allowed(make_node: Any) -> None:
    strict = make_node(name="strict")
    ann = strict.announcement(strict.variant(2))  # the trained bundle has no `expires`
    st = strict.watcher.wait_update(FINAL, strict.announce(ann), version=2)
    assert st["state"] == "rejected" and "no expiry" in st["reason"], st
    assert not strict.http.requests and strict.running() == 1

    lenient = make_node(UpdatesConfig(require_expires=False, trial_frames=10, trial_seconds=3, trial_max_wait_s=10,
                                      read_timeout_s=2, connect_timeout_s=1), name="lenient")
    st = lenient.watcher.wait_update(FINAL, lenient.announce(ann), version=2, timeout=60)
    assert st["state"] == "committed", st
    assert lenient.running() == 2


def test_unsynced_clock_holds_then_installs_after_sync(make_node: Any) -> None:
    clock = Clock(unsynced_clock())
    node = make_node(UpdatesConfig(clock_recheck_s=0.3, trial_frames=10, trial_seconds=3, trial_max_wait_s=10,
                                   read_timeout_s=2, connect_timeout_s=1), clock=clock)
    mark = node.announce(node.announcement(node.variant(2, expires=SOON)))
    held = node.watcher.wait_update({"announced", *FINAL}, mark, version=2)
    assert held["state"] == "announced" and "waiting for clock sync" in held["reason"], held
    time.sleep(1.5)  # several re-checks: still held, nothing fetched, nothing decided
    assert not node.http.requests and node.running() == 1
    assert not [u for u in node.watcher.updates[mark:] if u["state"] in FINAL]
    assert [u["state"] for u in node.watcher.updates[mark:]].count("announced") == 1, "held status repeated"
    clock.status = synced_clock()
    st = node.watcher.wait_update(FINAL, mark, version=2, timeout=60)
    assert st["state"] == "committed", st
    assert node.running() == 2


def test_unknown_clock_state_holds_unless_configured(make_node: Any) -> None:
    from agent.updates.intake import ClockGate

    unknown = Clock(ClockStatus(synchronized=None, source="none", detail="no adjtimex, no timedatectl"))
    assert "unknown sync state" in (ClockGate(unknown, "required").why_not() or "")
    assert ClockGate(unknown, "unknown_ok").why_not() is None
    assert ClockGate(Clock(unsynced_clock()), "unknown_ok").why_not() is not None
    assert ClockGate(Clock(unsynced_clock()), "off").why_not() is None


# -- evidence before commit --------------------------------------------------------------------------
def test_dead_camera_trial_never_commits(make_node: Any) -> None:
    node = make_node(UpdatesConfig(trial_frames=10, trial_seconds=1, trial_max_wait_s=2, read_timeout_s=2,
                                   connect_timeout_s=1))
    node.harness.loop.stop()  # the camera dies: no frame reaches the trial
    mark = node.announce(node.announcement(node.variant(2, expires=SOON)))
    st = node.watcher.wait_update(FINAL, mark, version=2, timeout=60)
    assert st["state"] == "rolled_back" and "no frames during trial: not committed" in st["reason"], st
    assert node.running() == 1
    state = node.harness.store.load_state()
    assert state.current is not None and state.current.version == 1 and state.pending is None
    assert node.harness.store.installed_versions() == [1]


def test_too_few_frames_is_not_evidence() -> None:
    from helpers_updates import frame_result

    from agent.updates.trial import TrialMonitor

    eng = object()
    mon = TrialMonitor(eng, 2, UpdatesConfig(trial_frames=10), baseline_ms=None)
    assert mon.missing_evidence(5) is not None and "no frames" in (mon.missing_evidence(5) or "")
    for _ in range(4):
        mon.feed(frame_result(engine=eng))
    assert "only 4 of 10 clean frames" in (mon.missing_evidence(5) or "")
    assert not mon.done.is_set()


# -- manifest paths ----------------------------------------------------------------------------------
def test_manifest_sig_as_file_entry_refused(make_node: Any) -> None:
    for name in ("manifest.sig", "manifest.json"):
        with pytest.raises(ValueError, match="reserved bundle path"):
            FileEntry(path=name, sha256="0" * 64, size=10)
    node = make_node()
    v2 = node.variant(2, expires=SOON)
    doc = json.loads((v2 / "manifest.json").read_text())
    doc["files"].append({"path": "manifest.sig", "sha256": "0" * 64, "size": 10})
    data = json.dumps(doc, indent=2).encode()
    ann = node.announcement(v2).model_copy(update={
        "manifest_b64": base64.b64encode(data).decode(),
        "signature_b64": base64.b64encode(node.key.sign(data)).decode()})  # validly signed, still refused
    st = node.watcher.wait_update(FINAL, node.announce(ann))
    assert st["state"] == "rejected" and "reserved bundle path" in st["reason"], st
    assert not [r for r in node.http.requests if "manifest" in r[1]] and node.running() == 1


# -- flood ---------------------------------------------------------------------------------------------
def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_flood_of_bad_announcements_costs_no_disk_and_bounded_memory(make_node: Any) -> None:
    node = make_node()
    up = node.harness.updater
    good = node.announcement(node.variant(2, expires=SOON))
    expired = node.announcement(node.variant(3, expires=datetime.now(UTC) - timedelta(minutes=1)))
    tampered = good.model_copy(update={"signature_b64": base64.b64encode(b"\0" * 64).decode()})
    payloads = [tampered.model_dump_json().encode(), b'{"manifest_b64": "not json', expired.model_dump_json().encode()]
    topics = ["edgefleet/announce/all", "edgefleet/announce/group/lab", "edgefleet/announce/node/node-1"]
    assert up.wait_idle(10)
    saves = [0]
    real_save = up.store.save_state

    def counting_save(state: Any) -> None:
        saves[0] += 1
        real_save(state)

    up.store.save_state = counting_save  # type: ignore[method-assign]
    statuses = [0]
    real_publish = up.publish

    def counting_publish(topic: str, payload: bytes, retain: bool) -> None:
        statuses[0] += 1
        real_publish(topic, payload, retain)

    up.publish = counting_publish
    state_dir = node.harness.state_dir
    before = _snapshot(state_dir)
    max_backlog = [0]
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        t0 = time.monotonic()
        for i in range(10_000):
            up.on_announcement(payloads[i % 3], topics[i % 3])
            if i % 100 == 0:
                max_backlog[0] = max(max_backlog[0], up.backlog())
        assert up.wait_idle(60), "the worker never caught up"
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = peak - base
    print(f"\n10,000 bad announcements in {elapsed:.1f} s: peak +{grown / 1e6:.2f} MB traced, "
          f"max backlog {max_backlog[0]}, {statuses[0]} statuses published, {saves[0]} state writes")
    assert max_backlog[0] <= len(topics), "the worker queue grew with the flood"
    assert grown < 8e6, f"memory grew by {grown / 1e6:.1f} MB during the flood"  # 10k payloads: >30 MB
    assert saves[0] == 0, "a rejected announcement wrote the state file"
    assert _snapshot(state_dir) == before, "the state directory changed"
    assert statuses[0] <= 5 + elapsed / 6 + 2, f"{statuses[0]} rejection statuses for a flood: not rate-limited"
    # One at a time, so that every one of them is verified and rejected: still no write, few reports.
    t1 = time.monotonic()
    for i in range(300):
        up.on_announcement(payloads[i % 3], topics[0])
        assert up.wait_idle(5)
    assert saves[0] == 0 and _snapshot(state_dir) == before
    assert statuses[0] <= 5 + (time.monotonic() - t0) / 6 + 2, f"{statuses[0]} statuses: not rate-limited"
    print(f"300 more, each verified: {time.monotonic() - t1:.1f} s, {statuses[0]} statuses in all")
    assert node.running() == 1 and not node.http.requests
    # The node is still fine afterwards: a good announcement installs (its steps are written as usual).
    up.store.save_state = real_save  # type: ignore[method-assign]
    threading.Event().wait(6.5)  # one report token back, so the outcome shows
    st = node.watcher.wait_update(FINAL, node.announce(good), version=2, timeout=60)
    assert st["state"] == "committed", st
