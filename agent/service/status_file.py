"""The daemon's broker link, published locally: `state_dir/daemon-status.json`.

On the node listener of the shipped broker config (docs/mosquitto/edge-fleet.conf) the broker makes the user
name the client id, so a second login with the node's credentials takes over the daemon's session and fires
its last will. `edge-agent check` / `doctor` therefore read this file while the daemon runs instead of
connecting (agent.doctor.services, agent.commands.check).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel

from agent.atomic import atomic_write

log = logging.getLogger(__name__)

FILE_NAME = "daemon-status.json"
REFRESH_S = 10.0  # rewritten at least this often while the daemon runs
FRESH_S = 60.0  # older than this: the daemon is hung or gone (and its pid may be reused)


class DaemonStatus(BaseModel):
    pid: int
    started: float  # unix time the daemon started
    broker_url: str  # without user info
    connected: bool
    last_error: str | None = None
    ts: float  # unix time of this write


def public_url(url: str) -> str:
    """The broker URL without any user:password@ part."""
    u = urlparse(url)
    if u.username is None and u.password is None:
        return url
    return url.replace(u.netloc, u.netloc.rpartition("@")[2], 1)


def status_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


class StatusWriter:
    """A thread that writes the file on every connect/disconnect (polled each 0.5 s) and every REFRESH_S."""

    def __init__(self, path: Path, mqtt: Any, broker_url: str) -> None:
        self.path = path
        self._mqtt = mqtt  # agent.service.mqtt.MqttClient: .connected, .last_error
        self._url = public_url(broker_url)
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def start(self) -> StatusWriter:
        self._thread = threading.Thread(target=self._loop, name="daemon-status", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Clean shutdown: no file, so check/doctor connect themselves."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc)

    def write(self) -> DaemonStatus:
        st = DaemonStatus(pid=os.getpid(), started=self._started, broker_url=self._url,
                          connected=bool(self._mqtt.connected), last_error=self._mqtt.last_error, ts=time.time())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, st.model_dump_json().encode())
        except OSError as exc:
            if not self._warned:  # once: an unwritable state_dir is reported elsewhere
                log.warning("cannot write %s: %s", self.path, exc)
                self._warned = True
        return st

    def _loop(self) -> None:
        last: tuple[bool, str | None] | None = None
        written = 0.0
        while not self._stop.is_set():
            now_key = (bool(self._mqtt.connected), self._mqtt.last_error)
            if now_key != last or time.monotonic() - written >= REFRESH_S:
                self.write()
                last, written = now_key, time.monotonic()
            self._stop.wait(0.5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user (doctor as a login user, daemon as edge-agent)
        return True
    return True


class StatusUnreadable(Exception):
    """The file exists but this user cannot read it: a daemon may be running, so do not connect."""


def running_daemon(state_dir: Path, now: float | None = None) -> DaemonStatus | None:
    """The status of a running daemon: the file exists, is fresh, and its pid is alive; else None.
    Raises StatusUnreadable when the file (or state_dir) exists but cannot be read."""
    path = status_path(state_dir)
    try:
        st = DaemonStatus.model_validate(json.loads(path.read_text()))
    except PermissionError as exc:
        raise StatusUnreadable(f"cannot read {path}: {exc.strerror}") from exc
    except (OSError, ValueError):
        return None
    age = (time.time() if now is None else now) - st.ts
    if age > FRESH_S or st.pid == os.getpid() or not pid_alive(st.pid):
        return None
    return st


def describe(st: DaemonStatus) -> tuple[bool, str]:
    """(connected, one line) for check/doctor."""
    who = f"the running agent (pid {st.pid})"
    if st.connected:
        return True, f"{who} is connected to {st.broker_url}"
    return False, f"{who} is not connected to {st.broker_url}: {st.last_error or 'no connection yet'}"


__all__ = ["DaemonStatus", "StatusUnreadable", "StatusWriter", "describe", "public_url", "running_daemon", "status_path"]
