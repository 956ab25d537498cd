"""Ship a bundle to the fleet: place its files where nodes fetch them, publish the signed announcement.

The target selector is part of the signed manifest (so a manifest for group A cannot be replayed on
group B's topic): publishing re-targets the manifest and signs the new bytes with the fleet key.
The announcement carries those exact bytes; nodes never fetch manifest.json from the server.
Light on purpose (stdlib, paho, agent.*): importable without torch or TensorFlow.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from agent.protocol.manifest import MANIFEST_NAME, SIGNATURE_NAME, Target
from agent.protocol.messages import Announcement
from agent.protocol.topics import DEFAULT_PREFIX, Topics
from agent.security.bundle import Bundle, BundleError
from agent.security.signing import SigningKey


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


def prepare(bundle_dir: Path, target: Target, key: SigningKey) -> tuple[Bundle, bytes, bytes]:
    """Check every file of the bundle, set its target, sign. Returns (bundle, manifest bytes, sig json)."""
    try:
        bundle = Bundle.load(Path(bundle_dir))  # sizes and sha256 of every file, before we vouch for it
    except BundleError as exc:
        raise PublishError(f"bundle {bundle_dir}: {exc}") from None
    manifest = bundle.manifest.model_copy(update={"target": target})
    data = manifest.to_bytes()
    sig = key.signature_file(data).model_dump_json(indent=2).encode()
    return bundle, data, sig


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


def mqtt_publish(broker_url: str, topic: str, payload: bytes, retain: bool = True, timeout: float = 10.0,
                 username: str | None = None, password: str | None = None, ca_file: Path | None = None) -> None:
    """Publish one message with QoS 1 and wait for the broker's acknowledgement."""
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
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise PublishError(f"broker did not acknowledge the publish on {topic} within {timeout:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()


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
) -> PublishResult:
    """The whole `edge-builder publish`.

    http_base alone: the URL where the bundle directory is already served.
    upload_dir (+ http_base): copy into upload_dir/<name>/<version>/; http_base is the URL serving upload_dir.
    """
    from agent.security.signing import SignatureError

    if http_base is None:
        raise PublishError("--http-base is required: the URL nodes fetch files from (of the bundle, or of --upload DIR)")
    try:
        key = SigningKey.load(key_path)
    except SignatureError as exc:
        raise PublishError(str(exc)) from None
    bundle, data, sig = prepare(bundle_dir, target, key)
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
                         uploaded_to=uploaded)


__all__ = ["PublishError", "PublishResult", "make_announcement", "mqtt_publish", "prepare", "publish_bundle", "upload"]
