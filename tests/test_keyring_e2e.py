"""Keyring rotation end to end (issue 13, docs/KEYS.md): `edge-builder keys` adds a signer and revokes the old
one, the operator publishes the retained keyring message, and a real daemon (AgentService with the trained
bundle, a real Mosquitto and HTTP server) installs it, then refuses an announcement signed by the revoked key
and commits one signed by the new key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from agent.protocol.topics import Topics

T = Topics("edgefleet")

@pytest.fixture
def rotated_keyring(tmp_path: Path, trained_bundle_key: Path) -> dict[str, Path]:
    """A keyring v1 whose signer is the key that signed the trained bundle; root and a new signer beside it."""
    from builder.cli import main

    d = tmp_path / "keys"
    d.mkdir()
    shutil.copy(trained_bundle_key, d / "old.key")
    shutil.copy(trained_bundle_key.with_suffix(".pub"), d / "old.pub")
    assert main(["keygen", str(d / "root.key")]) == 0
    assert main(["keygen", str(d / "new.key")]) == 0
    assert main(["keys", "init", "--root", str(d / "root.key"), "--signer", str(d / "old.pub"),
                 "--out", str(tmp_path / "keyring")]) == 0
    return {"dir": d, "keyring": tmp_path / "keyring"}


@pytest.mark.slow
def test_keyring_rotation_end_to_end(tmp_path: Path, mqtt_broker: Any, http_server: Any, trained_bundle: Path,
                                     rotated_keyring: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Rotate the signer with `edge-builder keys` (add new, revoke old), publish the keyring message: a real
    daemon then refuses an announcement signed by the revoked key and installs one signed by the new key."""
    from helpers_updates import Watcher as UpdateWatcher
    from helpers_updates import make_variant

    from agent.config import AgentConfig
    from agent.protocol.manifest import Target
    from agent.security.bundle import Bundle
    from agent.security.signing import SigningKey
    from agent.service.daemon import AgentService
    from builder.cli import main
    from builder.data.synth import make_video
    from builder.fleet.publish import publish_bundle

    keys, ring = rotated_keyring["dir"], rotated_keyring["keyring"]
    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    make_video(tmp_path / "scene.avi", n_frames=40, size=(320, 240), fps=15, classes=classes, seed=5)
    trusted = tmp_path / "trusted"
    shutil.copytree(ring, trusted, ignore=shutil.ignore_patterns("history"))
    cfg = AgentConfig(
        node_id="cam-1", topic_prefix="edgefleet",
        broker={"url": mqtt_broker.url, "reconnect_min_s": 1, "reconnect_max_s": 2},
        camera={"source": str(tmp_path / "scene.avi"), "loop": True, "realtime": True},
        backend={"prefer": "cpu"}, state_dir=tmp_path / "state", trusted_keys_dir=trusted,
        bundle=trained_bundle, state_interval_s=60,
        updates={"trial_frames": 10, "trial_seconds": 10, "read_timeout_s": 2, "connect_timeout_s": 2,
                 "clock_sync": "off"},
    )
    svc = AgentService(cfg).start()
    watcher = UpdateWatcher(mqtt_broker.host, mqtt_broker.port)
    try:
        v1 = Bundle.load(trained_bundle, svc.keyring).manifest.version
        assert svc.keyring is not None and svc.keyring.version == 1
        old_id = SigningKey.load(keys / "old.key").key_id
        assert main(["keys", "add-signer", str(ring), "--root", str(keys / "root.key"),
                     "--signer", str(keys / "new.pub")]) == 0
        assert main(["keys", "revoke", str(ring), old_id, "--root", str(keys / "root.key")]) == 0
        capsys.readouterr()
        assert main(["keys", "message", str(ring)]) == 0
        payload = capsys.readouterr().out.strip().encode()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-keys-test", protocol=mqtt.MQTTv5)
        pub.connect(mqtt_broker.host, mqtt_broker.port)
        pub.loop_start()
        pub.publish(T.keyring(), payload, qos=1, retain=True).wait_for_publish(5)
        assert wait_for(lambda: svc.keyring.version == 3, 15), svc.keyring_link.error
        assert svc.keyring_link.error is None
        assert (tmp_path / "state" / "keyring" / "keyring.json").exists()
        # the retained message again (a reconnect): stale, ignored quietly
        svc.keyring_link.handle(payload)
        assert svc.keyring_link.error is None and svc.keyring.version == 3

        def ship(version: int, key: str, match: int | None) -> dict[str, Any]:
            mark = watcher.mark()
            b = make_variant(trained_bundle, tmp_path / f"v{version}", keys / key, version)
            publish_bundle(b, mqtt_broker.url, Target(), keys / key, http_base=http_server.base_url,
                           upload_dir=http_server.root)
            return watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=match,
                                       timeout=90)

        st = ship(v1 + 1, "old.key", None)  # refused before its manifest is read: no version in the status
        assert st["state"] == "rejected" and "revoked" in st["reason"], st
        st = ship(v1 + 2, "new.key", v1 + 2)
        assert st["state"] == "committed", st
        assert svc.updater is not None and svc.updater.store.installed_versions()[-1] == v1 + 2
        # a forged keyring (signed by a signer, not the root) is refused and reported
        forged = json.loads(payload)
        forged["signatures"] = {"signatures": []}
        svc.keyring_link.handle(json.dumps(forged).encode())
        assert svc.keyring_link.error and svc.keyring.version == 3
        pub.disconnect()
        pub.loop_stop()
    finally:
        watcher.close()
        svc.stop()
