"""sd_notify over a real AF_UNIX datagram socket (path and abstract), as systemd provides it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import SdNotifier, WatchdogPinger, watchdog_interval_s


class NotifySocket:
    """The receiving end systemd would hold."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(("\0" + address[1:]) if address.startswith("@") else address)
        self.sock.settimeout(0.05)

    def drain(self, wait: float = 0.2) -> list[str]:
        out: list[str] = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                out.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return out


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    addr = str(tmp_path / "notify") if request.param == "path" else f"@edge-agent-test-{os.getpid()}-{time.time_ns()}"
    s = NotifySocket(addr)
    yield s
    s.sock.close()


def test_ready_status_watchdog_stopping(notify_socket: NotifySocket) -> None:
    n = SdNotifier(notify_socket.address)
    assert n.enabled
    assert n.ready("running model v3 on cpu")
    assert n.status("degraded: TPU lost")
    assert n.watchdog()
    assert n.stopping()
    msgs = notify_socket.drain()
    assert msgs == ["READY=1\nSTATUS=running model v3 on cpu", "STATUS=degraded: TPU lost", "WATCHDOG=1",
                    "STOPPING=1"]
    assert n.ready_sent


def test_env_socket_and_noop_outside_systemd(notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    assert SdNotifier().watchdog()
    assert notify_socket.drain() == ["WATCHDOG=1"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    n = SdNotifier()
    assert not n.enabled and not n.ready() and not n.watchdog()


def test_missing_socket_is_not_fatal(tmp_path: Path) -> None:
    n = SdNotifier(str(tmp_path / "gone"))
    assert n.ready() is False


def test_watchdog_interval_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None


def test_pinger_rate_limits_and_stops_when_loop_stops(notify_socket: NotifySocket) -> None:
    p = WatchdogPinger(SdNotifier(notify_socket.address), interval_s=0.05)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5:  # a loop kicking every 1 ms
        p.kick()
        time.sleep(0.001)
    got = notify_socket.drain(0.1)
    assert 5 <= len(got) <= 12 and set(got) == {"WATCHDOG=1"}
    # the loop hangs: no kicks, no pings
    assert notify_socket.drain(0.3) == []
