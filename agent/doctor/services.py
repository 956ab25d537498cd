"""Doctor checks that talk to the outside: camera, MQTT broker, trusted signing keys."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.doctor.model import CheckResult, DoctorContext, fail, ok, warn
from agent.system.host import NodeInfo


def camera_configured(ctx: DoctorContext) -> bool:
    """True when the config file or environment names a camera (the default /dev/video0 is only a guess)."""
    return "camera" in ctx.cfg.model_fields_set


def check_camera(ctx: DoctorContext) -> CheckResult:
    from agent.camera.sources import Camera

    cam_cfg = ctx.cfg.camera
    if not camera_configured(ctx):
        return warn("camera", "no camera configured: not opened",
                    "set [camera] source = \"/dev/video0\" | \"rtsp://…\" | \"picamera2\" in the config")
    if cam_cfg.resolved_kind() == "usb" and cam_cfg.source.startswith("/dev/"):
        node = ctx.host.path(cam_cfg.source)
        if not node.exists():
            return fail("camera", f"{cam_cfg.source} does not exist",
                        "plug the camera in; `v4l2-ctl --list-devices` shows the right /dev/videoN")
    cam = Camera(cam_cfg).start()
    try:
        t0 = time.monotonic()
        frame = cam.get(timeout=ctx.timeout)
        if frame is None:
            why = cam.last_error or cam.state.value
            return fail("camera", f"{cam.description}: no frame within {ctx.timeout:g} s ({why})",
                        "check the source URL/device and credentials; the service user needs group video")
        h, w = frame.image.shape[:2]
        return ok("camera", f"{cam.description}: {w}x{h}, first frame after {time.monotonic() - t0:.2f} s",
                  width=w, height=h)
    finally:
        cam.stop()


def doctor_client_id(node_id: str) -> str:
    """Never the daemon's id: a broker drops the older session of a duplicate client id."""
    return f"{node_id}-doctor-{secrets.token_hex(3)}"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def mqtt_warnings() -> Iterator[list[str]]:
    """The MQTT client's warnings during the probe, kept from the terminal. Its last_error is overwritten
    by the disconnect that follows a refused CONNACK ("Protocol error"); the log keeps "Not authorized"."""
    log = logging.getLogger("agent.service.mqtt")
    handler, saved = _Collect(), (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


@dataclass
class ConnectingContext(DoctorContext):
    """`doctor --connect`: probe the broker live even while the agent runs (takes over its session under
    the shipped broker config, which forces the node's client id)."""


def check_broker(ctx: DoctorContext) -> CheckResult:
    """While the agent runs, its own view of the link (daemon-status.json); else a connection of our own.
    Connecting beside it with the node's credentials would take over its session: the shipped broker config
    makes the user name the client id on the node listener (docs/mosquitto/edge-fleet.conf)."""
    if isinstance(ctx, ConnectingContext):
        return _probe_broker(ctx)
    from agent.service.status_file import StatusUnreadable, describe, running_daemon

    try:
        st = running_daemon(ctx.host.path(ctx.cfg.state_dir))
    except StatusUnreadable as exc:
        return warn("broker", f"not probed: {exc}; the agent may be running and a connection of ours would "
                    "take over its session", "run doctor as root or the service user (or pass --connect)")
    if st is None:
        return _probe_broker(ctx)
    connected, line = describe(st)
    if connected:
        return ok("broker", line, pid=st.pid, source="daemon-status")
    return fail("broker", line, "check broker.url, that the broker runs and the firewall allows the port, and "
                "the username/password or certificates (`journalctl -u edge-agent`)", pid=st.pid,
                source="daemon-status")


def _probe_broker(ctx: DoctorContext) -> CheckResult:
    from agent.service.mqtt import MqttClient

    b = ctx.cfg.broker
    # MqttClient prefers the configured client_id over the one passed in: drop it so ours wins.
    probe_cfg = b.model_copy(update={"client_id": None})
    cid = doctor_client_id(ctx.cfg.node_id)
    auth = f" as {b.username}" if b.username else " anonymously"
    try:
        client = MqttClient(probe_cfg, client_id=cid)
    except (OSError, ValueError) as exc:  # password_file or TLS files unreadable
        return fail("broker", f"cannot prepare the connection to {b.url}: {exc}",
                    "check broker.password_file / ca_file / cert_file / key_file paths and permissions")
    with mqtt_warnings() as warnings:
        client.start()
        try:
            deadline = time.monotonic() + ctx.timeout
            connected = False
            while not connected and time.monotonic() < deadline and client.last_error is None:
                connected = client.wait_connected(0.1)
        finally:
            client.stop()
    if connected:
        tls = ", TLS verified" if b.tls and not b.tls_insecure else ", TLS NOT verified" if b.tls else ""
        return ok("broker", f"connected to {b.url}{auth}{tls} (client id {cid})", client_id=cid)
    refused = [m.removeprefix("mqtt: ") for m in warnings if "refused" in m]
    why = refused[0] if refused else (client.last_error or "").removesuffix("; retrying")
    return fail("broker", f"{b.url}{auth}: {why or f'no answer within {ctx.timeout:g} s'}",
                "check broker.url, that the broker runs and the firewall allows the port, and the "
                "username/password or certificates", client_id=cid)


def check_keys(ctx: DoctorContext) -> CheckResult:
    from agent.security.signing import Keyring, SignatureError

    d = ctx.cfg.trusted_keys_dir
    where = ctx.host.path(d)
    fix = f"copy the fleet's public key (KEY.pub from edge-builder keygen) into {d} (docs/DEPLOY.md)"
    if not where.exists():
        return fail("keys", f"trusted keys dir {d} does not exist: no update can be verified", fix)
    if not where.is_dir():
        return fail("keys", f"{d} is not a directory", fix)
    if not os.access(where, os.R_OK | os.X_OK):
        return fail("keys", f"{d} is not readable by uid {os.getuid()}", f"sudo chmod 0755 {d}")
    try:
        ring = Keyring.load(where)
    except SignatureError as exc:
        return fail("keys", str(exc), "replace the file with the fleet's Ed25519 public key (PEM)")
    except OSError as exc:
        return fail("keys", f"cannot read a key in {d}: {exc.strerror or exc}", f"sudo chmod 0644 {d}/*.pub")
    if not ring.keys:
        return fail("keys", f"no *.pub keys in {d}", fix)
    unreadable = _unreadable_by_service(ctx, where)
    if unreadable:
        return fail("keys", f"{ctx.service_user} cannot read {', '.join(unreadable)} (mode bits)",
                    f"sudo chmod 0755 {d} && sudo chmod 0644 {d}/*.pub")
    return ok("keys", f"{len(ring.keys)} pinned key(s): {', '.join(sorted(ring.keys))}", key_ids=sorted(ring.keys))


def _unreadable_by_service(ctx: DoctorContext, keys_dir: Path) -> list[str]:
    """Doctor often runs as root, which reads anything: judge the service user's access by the mode bits."""
    acc = ctx.accounts
    user = acc.user(ctx.service_user)
    if user is None:
        return []
    gids = acc.gids_of(user)
    bad = [] if NodeInfo.of(keys_dir).allows(user.uid, gids, os.R_OK | os.X_OK) else [keys_dir.name + "/"]
    bad += [f.name for f in sorted(keys_dir.glob("*.pub")) if not NodeInfo.of(f).allows(user.uid, gids, os.R_OK)]
    return bad
