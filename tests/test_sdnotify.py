"""sd_notify over a real AF_UNIX datagram socket (path and abstract), as systemd provides it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.system.sdnotify import SdNotifier, WatchdogPinger, watchdog_interval_s


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


def _accumulate(sock: NotifySocket, until, timeout: float) -> list[str]:  # type: ignore[no-untyped-def]
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += sock.drain(0.1)
        if until(got):
            break
    return got


def test_daemon_ready_only_after_connect_and_model_and_watchdog_follows_invoke(
        mqtt_broker, coral_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import sys
    import threading

    from agent.config import AgentConfig
    from agent.service.daemon import AgentService
    from builder.data.synth import make_video

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_telemetry import TfliteClassifierEngine

    sock = NotifySocket(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    video = tmp_path / "cam.avi"
    make_video(video, n_frames=20, size=(160, 120), fps=20, classes=["a", "b"], seed=3)
    mqtt_broker.stop()  # the broker is down when the agent starts
    cfg = AgentConfig(
        node_id="sd-1", topic_prefix="sd",
        broker={"url": mqtt_broker.url, "reconnect_min_s": 1, "reconnect_max_s": 1},
        camera={"source": str(video), "loop": True, "realtime": True},
        backend={"prefer": "cpu"}, state_dir=tmp_path / "state", trusted_keys_dir=tmp_path / "keys", bundle=None,
        telemetry={"watchdog_interval_s": 0.1, "interval_s": 1.0, "power_source": "estimated"},
    )
    svc = AgentService(cfg)
    runner = threading.Thread(target=svc.run, kwargs={"install_signal_handlers": False}, daemon=True)
    runner.start()
    try:
        # no broker, no model: the loop is alive (pings) but the service is not ready
        got = sock.drain(1.5)
        assert got.count("WATCHDOG=1") >= 5 and not any("READY=1" in m for m in got), got
        # a model, still no broker: not ready
        engine = TfliteClassifierEngine(coral_data / "mobilenet_v1_0.25_128_quant.tflite")
        svc.install_engine(engine)
        got = sock.drain(1.5)
        assert engine.invokes > 5 and not any("READY=1" in m for m in got), got
        # the broker comes up: READY=1 (with a STATUS line) once connected
        monkeypatch.delenv("NOTIFY_SOCKET")  # Debian's mosquitto sd_notifies READY=1 itself when it sees it
        mqtt_broker.start()
        got = _accumulate(sock, lambda g: any("READY=1" in m for m in g), 15)
        ready = [m for m in got if "READY=1" in m]
        assert ready and svc.mqtt.connected, got
        assert "STATUS=" in ready[0] and "mobilenet_v1_0.25_128_quant v1" in ready[0]
        # WATCHDOG=1 keeps arriving while frames are inferred
        before = engine.invokes
        got = sock.drain(1.0)
        assert got.count("WATCHDOG=1") >= 5 and engine.invokes > before
        # a deliberately hung invoke: the pings stop (systemd would restart us after WatchdogSec)
        engine.hang.set()
        assert engine.stuck.wait(10), "the next invoke never started"  # the frame in flight has finished
        sock.drain(0.2)  # pings sent before the invoke blocked
        stuck_at = engine.invokes
        got = sock.drain(1.5)
        assert "WATCHDOG=1" not in got, got
        assert engine.invokes == stuck_at
        # released: pings resume
        engine.hang.clear()
        engine.release.set()
        got = _accumulate(sock, lambda g: g.count("WATCHDOG=1") >= 3, 5)
        assert got.count("WATCHDOG=1") >= 3
    finally:
        engine_release = locals().get("engine")
        if engine_release is not None:
            engine_release.hang.clear()
            engine_release.release.set()
        svc.request_stop()
        runner.join(15)
        sock.sock.close()
    assert not runner.is_alive()
