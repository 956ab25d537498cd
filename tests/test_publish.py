"""edge-builder publish: files placed for the HTTP server, signed announcement retained on the right topic."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers_updates import make_bundle

from agent.protocol.messages import Announcement
from agent.security.bundle import parse_manifest
from agent.security.signing import Keyring, SigningKey


def _cli(argv: list[str]) -> int:
    from builder.commands import publish

    parser = argparse.ArgumentParser(prog="edge-builder")
    publish.register(parser.add_subparsers())
    args = parser.parse_args(["publish", *argv])
    return int(args.func(args))


def _retained(broker: Any, topic: str) -> bytes:
    out = subprocess.run(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", topic, "-C", "1",
                          "-W", "5", "-F", "%r %p"], capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    flag, _, payload = out.stdout.partition(b" ")
    assert flag == b"1", "announcement must be retained"
    return payload.rstrip(b"\n")


@pytest.fixture
def signed(tmp_path: Path, coral_data: Path) -> tuple[Path, Path, SigningKey]:
    key = SigningKey.generate()
    key_path = tmp_path / "fleet.key"
    key.save(key_path)
    return make_bundle(tmp_path / "bundle", key, 3), key_path, key


@pytest.mark.parametrize(("target", "topic"), [("all", "edgefleet/announce/all"),
                                               ("group:lab", "edgefleet/announce/group/lab"),
                                               ("node:cam-7", "edgefleet/announce/node/cam-7")])
def test_publish_upload_and_retained_signed_announcement(signed: tuple[Path, Path, SigningKey], mqtt_broker: Any,
                                                         http_server: Any, target: str, topic: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bundle, key_path, key = signed
    rc = _cli([str(bundle), "--broker", mqtt_broker.url, "--upload", str(http_server.root),
               "--http-base", http_server.base_url, "--target", target, "--key", str(key_path)])
    assert rc == 0
    assert topic in capsys.readouterr().out
    ann = Announcement.model_validate_json(_retained(mqtt_broker, topic))
    ring = Keyring()
    ring.add_pem(key.public_pem())
    ring.verify(ann.manifest_bytes(), ann.key_id, ann.signature())  # raises if not signed by the fleet key
    m = parse_manifest(ann.manifest_bytes())
    assert str(m.target) == target and m.version == 3
    assert ann.base_url == f"{http_server.base_url}/mobilenet/3/"
    served = http_server.root / "mobilenet" / "3"
    for f in m.files:
        assert (served / f.path).read_bytes() == (bundle / f.path).read_bytes()
    assert (served / "manifest.json").read_bytes() == ann.manifest_bytes()
    # The source bundle is untouched (its own target stays as built).
    assert parse_manifest((bundle / "manifest.json").read_bytes()).target.kind == "all"


def test_publish_http_base_only_leaves_files_in_place(signed: tuple[Path, Path, SigningKey], mqtt_broker: Any,
                                                      http_server: Any) -> None:
    bundle, key_path, _ = signed
    shutil.copytree(bundle, http_server.root / "b")
    rc = _cli([str(bundle), "--broker", mqtt_broker.url, "--http-base", f"{http_server.base_url}/b",
               "--key", str(key_path)])
    assert rc == 0
    ann = Announcement.model_validate_json(_retained(mqtt_broker, "edgefleet/announce/all"))
    assert ann.base_url == f"{http_server.base_url}/b/"
    assert sorted(p.name for p in http_server.root.iterdir()) == ["b"]


def test_publish_refuses_a_damaged_bundle(signed: tuple[Path, Path, SigningKey], mqtt_broker: Any,
                                          http_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    bundle, key_path, _ = signed
    (bundle / "golden_input.npy").write_bytes(b"tampered")
    rc = _cli([str(bundle), "--broker", mqtt_broker.url, "--upload", str(http_server.root),
               "--http-base", http_server.base_url, "--key", str(key_path)])
    assert rc == 1
    assert "golden_input.npy" in capsys.readouterr().err
    assert list(http_server.root.iterdir()) == []


@pytest.mark.parametrize(("argv", "text"), [
    (["--target", "everyone"], "target must be"),
    (["--key", "/nonexistent.key"], "cannot read private key"),
    (["--broker", "http://x"], "broker URL"),
])
def test_publish_bad_arguments(signed: tuple[Path, Path, SigningKey], http_server: Any, argv: list[str], text: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    bundle, key_path, _ = signed
    base = {"--broker": "mqtt://127.0.0.1:1", "--key": str(key_path), "--target": "all"}
    for i in range(0, len(argv), 2):
        base[argv[i]] = argv[i + 1]
    flat = [x for kv in base.items() for x in kv]
    rc = _cli([str(bundle), "--http-base", http_server.base_url, *flat])
    assert rc != 0
    assert text in capsys.readouterr().err


def test_publish_unreachable_broker(signed: tuple[Path, Path, SigningKey], http_server: Any,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from builder.fleet.devservices import free_port

    bundle, key_path, _ = signed
    rc = _cli([str(bundle), "--broker", f"mqtt://127.0.0.1:{free_port()}", "--http-base", http_server.base_url,
               "--key", str(key_path)])
    assert rc == 1 and "cannot connect to broker" in capsys.readouterr().err


def test_signature_covers_target(signed: tuple[Path, Path, SigningKey]) -> None:
    """A manifest re-targeted by anyone without the key no longer verifies."""
    from builder.fleet.publish import make_announcement

    bundle, _, key = signed
    data = (bundle / "manifest.json").read_bytes()
    ann = make_announcement(data, key, "http://x/")
    moved = json.loads(data)
    moved["target"] = {"kind": "group", "value": "other"}
    forged = ann.model_copy(update={"manifest_b64": base64.b64encode(json.dumps(moved).encode()).decode()})
    ring = Keyring()
    ring.add_pem(key.public_pem())
    from agent.security.signing import SignatureError

    with pytest.raises(SignatureError):
        ring.verify(forged.manifest_bytes(), forged.key_id, forged.signature())


def test_publish_sets_an_expiry(signed: tuple[Path, Path, SigningKey], mqtt_broker: Any, http_server: Any) -> None:
    bundle, key_path, _ = signed
    rc = _cli([str(bundle), "--broker", mqtt_broker.url, "--upload", str(http_server.root),
               "--http-base", http_server.base_url, "--key", str(key_path)])
    assert rc == 0
    m = parse_manifest(Announcement.model_validate_json(_retained(mqtt_broker, "edgefleet/announce/all")).manifest_bytes())
    assert m.expires is not None
    assert abs(m.expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)
    rc = _cli([str(bundle), "--broker", mqtt_broker.url, "--upload", str(http_server.root),
               "--http-base", http_server.base_url, "--key", str(key_path), "--expires-days", "2"])
    m = parse_manifest(Announcement.model_validate_json(_retained(mqtt_broker, "edgefleet/announce/all")).manifest_bytes())
    assert rc == 0 and m.expires is not None
    assert abs(m.expires - (datetime.now(UTC) + timedelta(days=2))) < timedelta(minutes=5)


def test_refresh_resigns_the_live_announcement_with_a_later_expiry(
        signed: tuple[Path, Path, SigningKey], mqtt_broker: Any, http_server: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    bundle, key_path, key = signed
    topic = "edgefleet/announce/group/lab"
    common = ["--broker", mqtt_broker.url, "--upload", str(http_server.root), "--target", "group:lab",
              "--key", str(key_path)]
    assert _cli([str(bundle), "--http-base", http_server.base_url, "--expires-days", "1", *common]) == 0
    old = Announcement.model_validate_json(_retained(mqtt_broker, topic))
    assert _cli(["--refresh", "--expires-days", "10", *common]) == 0
    assert "refreshed  mobilenet v3" in capsys.readouterr().out
    new = Announcement.model_validate_json(_retained(mqtt_broker, topic))
    ring = Keyring()
    ring.add_pem(key.public_pem())
    ring.verify(new.manifest_bytes(), new.key_id, new.signature())
    m_old, m_new = parse_manifest(old.manifest_bytes()), parse_manifest(new.manifest_bytes())
    assert m_old.expires is not None and m_new.expires is not None
    assert m_new.expires - m_old.expires > timedelta(days=8)
    assert (m_new.version, m_new.files, str(m_new.target), new.base_url) == \
        (m_old.version, m_old.files, str(m_old.target), old.base_url)
    assert (http_server.root / "mobilenet" / "3" / "manifest.json").read_bytes() == new.manifest_bytes()


def test_refresh_refuses_what_this_key_did_not_sign(signed: tuple[Path, Path, SigningKey], mqtt_broker: Any,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from builder.fleet.publish import make_announcement, mqtt_publish

    bundle, key_path, _ = signed
    other = SigningKey.generate()
    ann = make_announcement((bundle / "manifest.json").read_bytes(), other, "http://x/")
    mqtt_publish(mqtt_broker.url, "edgefleet/announce/all", ann.model_dump_json().encode())
    assert _cli(["--refresh", "--broker", mqtt_broker.url, "--key", str(key_path)]) == 1
    assert "not one this key signed" in capsys.readouterr().err
    empty = "edgefleet/announce/node/nobody"
    assert _cli(["--refresh", "--broker", mqtt_broker.url, "--key", str(key_path), "--target", "node:nobody"]) == 1
    assert f"no retained announcement on {empty}" in capsys.readouterr().err
