"""Update security (issue 13) against the real daemon: AgentService (camera on a video file, Engine,
Pipeline, MQTT) with the builder's trained bundle, a real Mosquitto and a real HTTP server.

Expired announcement, replays after state.json is corrupted or deleted, a trial with a dead camera, a
server trickling one byte per second, and a validly signed manifest listing manifest.sig as a file.
The updater-level versions of these live in tests/test_update_security.py and tests/test_state_loss.py.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from helpers_updates import Watcher, make_variant, write_video

from agent.protocol.manifest import Target
from agent.security.bundle import Bundle
from agent.security.signing import SigningKey
from builder.fleet.publish import make_announcement, mqtt_publish, mqtt_retained, publish_bundle, upload

pytestmark = pytest.mark.slow

FINAL = {"committed", "rolled_back", "failed", "rejected"}
ANNOUNCE = "edgefleet/announce/all"
SOON = datetime.now(UTC) + timedelta(days=1)
UPDATES = {"trial_frames": 10, "trial_seconds": 2, "trial_max_wait_s": 10, "read_timeout_s": 2,
           "connect_timeout_s": 2, "total_timeout_s": 20,
           "clock_sync": "off"}  # this container's kernel reports an unsynchronized clock


class Rig:
    """Daemons on one broker and HTTP server, the operator's watcher, and ways to announce bundles."""

    def __init__(self, tmp: Path, broker: Any, http: Any, bundle: Path, key_path: Path, trusted: Path) -> None:
        self.tmp, self.broker, self.http, self.bundle, self.key_path, self.trusted = (
            tmp, broker, http, bundle, key_path, trusted)
        self.key = SigningKey.load(key_path)
        self.v1 = Bundle.load(bundle).manifest.version
        self.video = write_video(tmp / "camera.avi", frames=60)
        self.watcher = Watcher(broker.host, broker.port)
        self.services: list[Any] = []

    def start(self, state: str = "state", camera: dict[str, Any] | None = None, **updates: Any) -> Any:
        from agent.config import AgentConfig
        from agent.service.daemon import AgentService

        cfg = AgentConfig(
            node_id="cam-1", groups=["garden"], topic_prefix="edgefleet",
            broker={"url": self.broker.url, "reconnect_min_s": 1, "reconnect_max_s": 2},
            camera=camera or {"source": str(self.video), "loop": True, "realtime": True},
            backend={"prefer": "cpu"}, state_dir=self.tmp / state, trusted_keys_dir=self.trusted,
            bundle=self.bundle, state_interval_s=60, updates={**UPDATES, **updates},
        )
        svc = AgentService(cfg)
        frames: list[int | None] = []  # the model version of every frame the daemon ran
        svc.pipeline.add_frame_hook(lambda r: frames.append(r.model_version))
        svc.frames = frames  # type: ignore[attr-defined]
        self.services.append(svc)
        return svc.start()

    def variant(self, version: int, **kw: Any) -> Path:
        return make_variant(self.bundle, self.tmp / f"v{version}-{len(self.services)}", self.key_path, version,
                            **kw)

    def announcement(self, bundle: Path, base_url: str | None = None) -> bytes:
        """Upload `bundle` as signed (its own expiry) and return its announcement, not yet sent."""
        data = (bundle / "manifest.json").read_bytes()
        dst = upload(Bundle.load(bundle), data, (bundle / "manifest.sig").read_bytes(), self.http.root)
        url = base_url or f"{self.http.base_url}/{dst.relative_to(self.http.root)}/"
        return make_announcement(data, self.key, url).model_dump_json().encode()

    def send(self, payload: bytes, retain: bool = False) -> int:
        mark = self.watcher.mark()
        mqtt_publish(self.broker.url, ANNOUNCE, payload, retain=retain)
        return mark

    def close(self) -> None:
        for svc in self.services:
            svc.stop()
        self.watcher.close()


@pytest.fixture
def rig(tmp_path: Path, mqtt_broker: Any, http_server: Any, trained_bundle: Path, trained_bundle_key: Path,
        trained_bundle_keys: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, mqtt_broker, http_server, trained_bundle, trained_bundle_key, trained_bundle_keys)
    yield r
    r.close()


def _runs(svc: Any, version: int, n: int = 5, timeout: float = 20.0) -> None:
    """The daemon runs frames on `version` (the next `n` frames it runs are all on it)."""
    start = len(svc.frames)
    assert wait_for(lambda: len(svc.frames) >= start + n, timeout), "the daemon runs no frames"
    assert set(svc.frames[start:start + n]) == {version}, svc.frames[start:start + n]


# -- freshness -----------------------------------------------------------------------------------------
def test_expired_announcement_refused(rig: Rig) -> None:
    svc = rig.start()
    _runs(svc, rig.v1)
    payload = rig.announcement(rig.variant(rig.v1 + 1, expires=datetime.now(UTC) - timedelta(minutes=1)))
    st = rig.watcher.wait_update(FINAL, rig.send(payload), version=rig.v1 + 1)
    assert st["state"] == "rejected" and "expired" in st["reason"], st
    assert not rig.http.requests, "an expired announcement made the node download"
    _runs(svc, rig.v1)
    assert svc.updater.store.installed_versions() == [rig.v1]


# -- rollback protection after state loss -------------------------------------------------------------
def _restart_runs_v2(rig: Rig, damage: str, v2: int) -> Any:
    """Restart the daemon on the damaged state dir: it runs v2 (frames and retained state) without
    fetching anything, and says why it rebuilt its state."""
    n_requests, n_states = len(rig.http.requests), len(rig.watcher.states)
    mark = rig.watcher.mark()
    svc = rig.start()
    _runs(svc, v2)
    assert svc.frames[0] == v2, "the restarted daemon ran another model first"
    # The retained state published by this daemon (not the stopped one's) names v2.
    assert wait_for(lambda: [s for s in rig.watcher.states[n_states:]
                             if s["status"] != "stopped" and s["model"] and s["model"]["version"] == v2], 10)
    assert not [s for s in rig.watcher.states[n_states:] if s["model"] and s["model"]["version"] != v2]
    st = [s for s in rig.watcher.states[n_states:] if s["status"] != "stopped"][-1]
    assert st["previous_model"]["version"] == rig.v1, st
    assert len(rig.http.requests) == n_requests, "the node fetched a bundle to recover"
    assert not [u for u in rig.watcher.updates[mark:] if u["state"] in ("downloading", "committed")]
    state = svc.updater.store.load_state()
    assert state.current is not None and state.current.version == v2 and state.high_water == v2
    assert svc.updater.store.installed_versions() == [rig.v1, v2], "verified versions were deleted"
    assert state.last_result is not None and damage in (state.last_result.reason or ""), state.last_result
    return svc


def _replays_refused(rig: Rig, svc: Any, replay: bytes, v2: int) -> None:
    st = rig.watcher.wait_update(FINAL, rig.send(replay, retain=True), version=rig.v1)
    assert st["state"] == "rejected" and "not above the high-water mark" in st["reason"], st
    _runs(svc, v2)
    mqtt_publish(rig.broker.url, ANNOUNCE, b"")  # clear the retained replay


def test_replay_refused_after_state_corrupted_then_deleted(rig: Rig) -> None:
    svc = rig.start()
    _runs(svc, rig.v1)
    # The fleet's real announcement of v1 (the node already runs it: ignored), recorded for the replay.
    publish_bundle(rig.bundle, rig.broker.url, Target(), rig.key_path, http_base=rig.http.base_url,
                   upload_dir=rig.http.root)
    old = mqtt_retained(rig.broker.url, ANNOUNCE)
    assert old is not None
    v2 = rig.v1 + 1
    mark = rig.watcher.mark()
    publish_bundle(rig.variant(v2), rig.broker.url, Target(), rig.key_path, http_base=rig.http.base_url,
                   upload_dir=rig.http.root)
    st = rig.watcher.wait_update(FINAL, mark, version=v2, timeout=90)
    assert st["state"] == "committed", st
    _runs(svc, v2)
    mqtt_publish(rig.broker.url, ANNOUNCE, b"")  # no retained v2: a node that lost v2 could not re-fetch it
    state_file = rig.tmp / "state" / "models" / "state.json"
    for damage, hurt in (("corrupt", lambda: state_file.write_bytes(state_file.read_bytes()[:40])),
                         ("missing", state_file.unlink)):
        svc.stop()
        hurt()
        svc = _restart_runs_v2(rig, damage, v2)
        _replays_refused(rig, svc, old, v2)
    aside = list(state_file.parent.glob("state.json.corrupt-*"))
    assert len(aside) == 1, "the corrupt state.json is kept aside for diagnosis"


# -- evidence before commit ----------------------------------------------------------------------------
def test_dead_camera_trial_never_commits(rig: Rig) -> None:
    from agent.camera.frame import CameraState

    short = write_video(rig.tmp / "short.avi", frames=15)
    svc = rig.start(camera={"source": str(short), "loop": False, "realtime": True},
                    trial_seconds=2, trial_max_wait_s=5)
    assert wait_for(lambda: svc.camera.state == CameraState.ENDED, 20), svc.camera.state
    assert svc.frames and set(svc.frames) == {rig.v1}
    v2 = rig.v1 + 1
    mark = rig.send(rig.announcement(rig.variant(v2, expires=SOON)))
    trial = rig.watcher.wait_update({"trial", *FINAL}, mark, version=v2, timeout=60)
    assert trial["state"] == "trial", trial
    t0 = time.monotonic()
    st = rig.watcher.wait_update(FINAL, mark, version=v2, timeout=30)
    waited = time.monotonic() - t0
    assert st["state"] == "rolled_back" and "no frames during trial: not committed" in st["reason"], st
    assert waited < 5 + 3, f"rolled back {waited:.1f} s into the trial (trial_max_wait_s 5)"
    state = svc.updater.store.load_state()
    assert state.current is not None and state.current.version == rig.v1 and state.pending is None
    assert svc.updater.store.installed_versions() == [rig.v1]
    assert svc.pipeline.engine.model_version == rig.v1
    assert rig.watcher.wait_state(lambda s: s["model"] and s["model"]["version"] == rig.v1
                                  and (s.get("last_update") or {}).get("version") == v2)


# -- download deadlines --------------------------------------------------------------------------------
class Trickle:
    """An HTTP server on 127.0.0.1 sending a bundle's real files at one byte per second."""

    def __init__(self, bundle: Path) -> None:
        self.stop_event = threading.Event()
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append(self.path)
                body = (bundle / Path(self.path).name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):
                    if outer.stop_event.wait(1.0):
                        return
                    try:
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_one_byte_per_second_server_fails_within_deadline(rig: Rig) -> None:
    total, read = 3.0, 2.0
    svc = rig.start(total_timeout_s=total, read_timeout_s=read, download_retries=2)
    _runs(svc, rig.v1)
    v2 = rig.v1 + 1
    bundle = rig.variant(v2, expires=SOON)
    trickle = Trickle(bundle)
    try:
        mark = rig.send(rig.announcement(bundle, base_url=trickle.base_url))
        dl = rig.watcher.wait_update({"downloading", *FINAL}, mark, version=v2, timeout=30)
        assert dl["state"] == "downloading", dl
        t0 = time.monotonic()
        st = rig.watcher.wait_update(FINAL, mark, version=v2, timeout=total + read + 10)
        took = time.monotonic() - t0
    finally:
        trickle.close()
    assert st["state"] == "failed" and "total download timeout" in st["reason"], st
    assert trickle.requests, "the node never asked the trickling server"
    assert took <= total + read + 1.0, f"failed {took:.1f} s after the download began (bound {total + read:g} s)"
    print(f"\ntrickling server: failed after {took:.1f} s ({st['reason']})")
    _runs(svc, rig.v1)
    assert svc.updater.store.installed_versions() == [rig.v1]


# -- manifest paths ------------------------------------------------------------------------------------
def test_manifest_sig_file_entry_refused(rig: Rig) -> None:
    svc = rig.start()
    _runs(svc, rig.v1)
    v2 = rig.v1 + 1
    bundle = rig.variant(v2, expires=SOON)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["files"].append({"path": "manifest.sig", "sha256": "0" * 64, "size": 10})
    data = json.dumps(doc, indent=2).encode()
    ann = json.loads(rig.announcement(bundle))
    ann["manifest_b64"] = base64.b64encode(data).decode()
    ann["signature_b64"] = base64.b64encode(rig.key.sign(data)).decode()  # validly signed, still refused
    st = rig.watcher.wait_update(FINAL, rig.send(json.dumps(ann).encode()))
    assert st["state"] == "rejected" and "reserved bundle path" in st["reason"], st
    assert not rig.http.requests, "the node fetched files of a manifest it should have refused"
    _runs(svc, rig.v1)
    assert svc.updater.store.installed_versions() == [rig.v1]
