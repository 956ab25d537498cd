"""Ship a bundle to the fleet: place its files where nodes fetch them, publish the signed announcement.

The target selector is part of the signed manifest (so a manifest for group A cannot be replayed on
group B's topic): publishing re-targets the manifest and signs the new bytes with the fleet key.
The announcement carries those exact bytes; nodes never fetch manifest.json from the server.
Every published manifest expires (default 30 days, TUF's freshness rule: a frozen or replayed old
announcement dies by itself); `refresh_announcement` re-signs the live one with a later expiry.
The manifest is published as schema 2 (per-backend `needs`: nodes fetch only their files) unless
`manifest_version=1` is asked for, for fleets with agents older than schema 2 (they fetch every file).
Light on purpose (stdlib, paho, agent.*): importable without torch or TensorFlow.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from agent.protocol.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    Manifest,
    Target,
    with_schema,
)
from agent.protocol.messages import Announcement
from agent.protocol.topics import DEFAULT_PREFIX, Topics
from agent.security.bundle import Bundle, BundleError, parse_manifest
from agent.security.signing import SigningKey

DEFAULT_EXPIRES_DAYS = 30.0


class PublishError(Exception):
    """Publishing failed; the message says what to fix."""


@dataclass(frozen=True)
class PublishResult:
    topic: str
    base_url: str
    name: str
    version: int
    key_id: str
    uploaded_to: Path | None
    expires: datetime | None = None


def expiry(days: float) -> datetime:
    if days <= 0:
        raise PublishError(f"--expires-days must be above 0, not {days:g}")
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def prepare(bundle_dir: Path, target: Target, key: SigningKey, expires_days: float = DEFAULT_EXPIRES_DAYS,
            manifest_version: int = SCHEMA_VERSION) -> tuple[Bundle, bytes, bytes]:
    """Check every file of the bundle, set its target, expiry and schema version, sign.
    Returns (bundle, manifest bytes, signature json)."""
    bundle = load_checked(bundle_dir)
    return (bundle, *sign_for(bundle, target, key, expires_days, manifest_version))


def load_checked(bundle_dir: Path) -> Bundle:
    """The bundle with the size and sha256 of every file checked, before we vouch for it (complete)."""
    try:
        return Bundle.load(Path(bundle_dir), complete=True)
    except BundleError as exc:
        raise PublishError(f"bundle {bundle_dir}: {exc}") from None


def sign_for(bundle: Bundle, target: Target, key: SigningKey, expires_days: float = DEFAULT_EXPIRES_DAYS,
             manifest_version: int = SCHEMA_VERSION) -> tuple[bytes, bytes]:
    """The checked bundle's manifest re-targeted, with its expiry and schema: (manifest bytes, signature json)."""
    manifest = bundle.manifest.model_copy(update={"target": target, "expires": expiry(expires_days)})
    try:
        manifest = with_schema(manifest, manifest_version)
    except ValueError as exc:
        raise PublishError(f"bundle {bundle.root}: cannot write a schema {manifest_version} manifest: "
                           f"{str(exc).splitlines()[0]}") from None
    data = manifest.to_bytes()
    return data, key.signature_file(data).model_dump_json(indent=2).encode()


def upload(bundle: Bundle, data: bytes, sig: bytes, upload_dir: Path) -> Path:
    """Copy the bundle into upload_dir/<name>/<version>/ (via a temp dir and one rename)."""
    m = bundle.manifest
    dst = Path(upload_dir) / m.name / str(m.version)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for entry in m.files:
            (tmp / entry.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle.path(entry.path), tmp / entry.path)
        (tmp / MANIFEST_NAME).write_bytes(data)
        (tmp / SIGNATURE_NAME).write_bytes(sig)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PublishError(f"cannot upload to {upload_dir}: {exc.strerror or exc}") from None
    return dst


def make_announcement(data: bytes, key: SigningKey, base_url: str) -> Announcement:
    sig = key.sign(data)
    return Announcement(manifest_b64=base64.b64encode(data).decode(), key_id=key.key_id,
                        signature_b64=base64.b64encode(sig).decode(), base_url=base_url)


@contextmanager
def _connected(broker_url: str, timeout: float, username: str | None, password: str | None,
               ca_file: Path | None) -> Iterator[object]:
    """A paho client connected (CONNACK received) to `broker_url`, network loop running."""
    import paho.mqtt.client as mqtt

    u = urlparse(broker_url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl", "ws", "wss") or not u.hostname:
        raise PublishError(f"broker URL must look like mqtt://host:port, not {broker_url!r}")
    tls = u.scheme in ("mqtts", "ssl", "wss")
    port = u.port or {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "ws": 80, "wss": 443}[u.scheme]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         transport="websockets" if u.scheme in ("ws", "wss") else "tcp")
    if username or u.username:
        client.username_pw_set(username or u.username, password or u.password)
    if tls:
        client.tls_set(ca_certs=str(ca_file) if ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
    connected = threading.Event()
    result: dict[str, object] = {}

    def on_connect(c: object, userdata: object, flags: object, reason: object, props: object) -> None:
        result["rc"] = reason
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(u.hostname, port, keepalive=30)
    except OSError as exc:
        raise PublishError(f"cannot connect to broker {broker_url}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise PublishError(f"no CONNACK from {broker_url} within {timeout:.0f} s")
        rc = result.get("rc")
        if getattr(rc, "is_failure", False):
            raise PublishError(f"broker refused the connection: {rc}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_publish(broker_url: str, topic: str, payload: bytes, retain: bool = True, timeout: float = 10.0,
                 username: str | None = None, password: str | None = None, ca_file: Path | None = None) -> None:
    """Publish one message with QoS 1 and wait for the broker's acknowledgement."""
    with _connected(broker_url, timeout, username, password, ca_file) as client:
        info = client.publish(topic, payload, qos=1, retain=retain)  # type: ignore[attr-defined]
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise PublishError(f"broker did not acknowledge the publish on {topic} within {timeout:.0f} s")


def mqtt_retained(broker_url: str, topic: str, timeout: float = 5.0, username: str | None = None,
                  password: str | None = None, ca_file: Path | None = None) -> bytes | None:
    """The retained message of `topic` (None when there is none within `timeout`)."""
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(c: object, userdata: object, msg: object) -> None:
        if getattr(msg, "retain", False) and not got:
            got.append(bytes(getattr(msg, "payload", b"")))
            arrived.set()

    with _connected(broker_url, timeout, username, password, ca_file) as client:
        client.on_message = on_message  # type: ignore[attr-defined]
        client.subscribe(topic, qos=1)  # type: ignore[attr-defined]
        arrived.wait(timeout)
    return got[0] if got and got[0] else None


def publish_bundle(
    bundle_dir: Path,
    broker_url: str,
    target: Target,
    key_path: Path,
    http_base: str | None = None,
    upload_dir: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
    expires_days: float = DEFAULT_EXPIRES_DAYS,
    manifest_version: int = SCHEMA_VERSION,
) -> PublishResult:
    """The whole `edge-builder publish` (`manifest_version=1` for nodes older than manifest schema 2).

    http_base alone: the URL where the bundle directory is already served.
    upload_dir (+ http_base): copy into upload_dir/<name>/<version>/; http_base is the URL serving upload_dir.
    """
    if http_base is None:
        raise PublishError("--http-base is required: the URL nodes fetch files from (of the bundle, or of --upload DIR)")
    key = _load_key(key_path)
    bundle, data, sig = prepare(bundle_dir, target, key, expires_days, manifest_version)
    m = bundle.manifest
    uploaded = None
    base_url = http_base.rstrip("/") + "/"
    if upload_dir is not None:
        uploaded = upload(bundle, data, sig, upload_dir)
        base_url = f"{http_base.rstrip('/')}/{m.name}/{m.version}/"
    ann = make_announcement(data, key, base_url)
    topic = Topics(prefix).announce(target)
    mqtt_publish(broker_url, topic, ann.model_dump_json().encode(), retain=True, username=username,
                 password=password, ca_file=ca_file)
    return PublishResult(topic=topic, base_url=base_url, name=m.name, version=m.version, key_id=key.key_id,
                         uploaded_to=uploaded, expires=parse_manifest(data).expires)


def _load_key(key_path: Path) -> SigningKey:
    from agent.security.signing import SignatureError

    try:
        return SigningKey.load(key_path)
    except SignatureError as exc:
        raise PublishError(str(exc)) from None


def refresh_announcement(
    broker_url: str,
    target: Target,
    key_path: Path,
    expires_days: float = DEFAULT_EXPIRES_DAYS,
    prefix: str = DEFAULT_PREFIX,
    upload_dir: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
) -> PublishResult:
    """`edge-builder publish --refresh`: the live announcement of `target`, re-signed with a later expiry.

    Same version, files and base URL: nodes running it ignore it, nodes yet to install it get one that
    is not expired. Only an announcement this key signed is refreshed (never vouch for what the broker
    happens to hold)."""
    key = _load_key(key_path)
    topic = Topics(prefix).announce(target)
    raw = mqtt_retained(broker_url, topic, username=username, password=password, ca_file=ca_file)
    if raw is None:
        raise PublishError(f"no retained announcement on {topic} to refresh (publish the bundle instead)")
    ann, m = _own_announcement(raw, key, topic)
    if m.target != target:
        raise PublishError(f"the announcement on {topic} targets {m.target}, not {target}")
    data = m.model_copy(update={"expires": expiry(expires_days)}).to_bytes()
    fresh = make_announcement(data, key, ann.base_url)
    uploaded = None
    copy = Path(upload_dir) / m.name / str(m.version) if upload_dir is not None else None
    if copy is not None and copy.is_dir():  # keep the server's copy identical to what nodes get
        sig = key.signature_file(data).model_dump_json(indent=2).encode()
        (copy / MANIFEST_NAME).write_bytes(data)
        (copy / SIGNATURE_NAME).write_bytes(sig)
        uploaded = copy
    mqtt_publish(broker_url, topic, fresh.model_dump_json().encode(), retain=True, username=username,
                 password=password, ca_file=ca_file)
    return PublishResult(topic=topic, base_url=ann.base_url, name=m.name, version=m.version, key_id=key.key_id,
                         uploaded_to=uploaded, expires=parse_manifest(data).expires)


def _own_announcement(raw: bytes, key: SigningKey, topic: str) -> tuple[Announcement, Manifest]:
    """Parse the retained announcement and check that `key` signed it."""
    from agent.security.signing import Keyring, SignatureError

    try:
        ann = Announcement.model_validate_json(raw)
        data = ann.manifest_bytes()
        ring = Keyring()
        ring.add_pem(key.public_pem())
        ring.verify(data, ann.key_id, ann.signature())
        return ann, parse_manifest(data)
    except (ValueError, BundleError, SignatureError) as exc:
        raise PublishError(f"the announcement on {topic} is not one this key signed ({exc}): "
                           "publish the bundle again instead") from None


__all__ = ["DEFAULT_EXPIRES_DAYS", "refresh_announcement", "mqtt_retained", "PublishError", "PublishResult", "make_announcement", "mqtt_publish", "prepare", "publish_bundle", "upload"]
