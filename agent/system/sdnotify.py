"""sd_notify(3) without systemd-python: one datagram per call to $NOTIFY_SOCKET.

READY=1 once the daemon is useful (broker connected and a model loaded), WATCHDOG=1 from the inference
loop (so a hung invoke stops the pings and systemd restarts us), STATUS=… for `systemctl status`.
A path starting with "@" is a Linux abstract socket. Outside systemd every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)


class SdNotifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.ready_sent = False
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)  # never stall the inference loop on a full socket buffer
        addr = self.address or ""
        self._target = ("\0" + addr[1:]) if addr.startswith("@") else addr

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send "KEY=VALUE" lines in one datagram; False (logged once per error type) if it failed."""
        if self._sock is None or not fields:
            return False
        msg = "\n".join(fields).encode()
        with self._lock:
            try:
                self._sock.sendto(msg, self._target)
                return True
            except OSError as exc:
                log.debug("sd_notify %r failed: %s", fields, exc)
                return False

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"] + ([f"STATUS={status}"] if status else [])
        ok = self.notify(*fields)
        self.ready_sent = self.ready_sent or ok
        return ok

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC, if meant for this pid), as sd_watchdog_enabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


class WatchdogPinger:
    """Rate-limited WATCHDOG=1, called from the inference loop after each frame (`kick()`).

    Kicks are cheap: at most one datagram every `interval_s`. If the loop hangs (a stuck invoke), kick() is
    not called and systemd's watchdog fires. `idle_ok()` lets a loop with no camera frames still prove it
    is alive (it calls kick from its wait loop), so only a hung invoke stops the pings.
    """

    def __init__(self, notifier: SdNotifier, interval_s: float | None = None) -> None:
        self.notifier = notifier
        self.interval_s = interval_s if interval_s is not None else (watchdog_interval_s() or 10.0)
        self._last = 0.0
        self.sent = 0

    def kick(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            if self.notifier.watchdog():
                self.sent += 1
