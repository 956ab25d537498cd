"""`edge-agent doctor` / `check` on a node while its daemon runs (issue 13 item 8), against a real Mosquitto with
the shipped docs/mosquitto/edge-fleet.conf + .acl: the broker forces the node's client id on the node listener,
so a probe with the node's credentials would take over the daemon's session and fire its last will. Instead
they report the daemon's own link from state_dir/daemon-status.json; with no daemon running they connect.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from test_mqtt_hardening import NODES, ShippedBroker, T, Watcher, shipped  # noqa: F401  (the fixture)

from agent.config import load_config
from agent.doctor.model import DoctorContext
from agent.doctor.registry import run_checks
from agent.doctor.services import ConnectingContext
from agent.service.status_file import DaemonStatus, public_url, running_daemon, status_path
from agent.system.host import HostRoot

ROOT = Path(__file__).resolve().parents[1]
NODE = "node-a"


def node_config(broker: ShippedBroker, tmp_path: Path) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"""
node_id = "{NODE}"
topic_prefix = "edgefleet"
state_dir = "{tmp_path / 'state'}"
trusted_keys_dir = "{tmp_path / 'keys'}"
[broker]
url = "mqtts://127.0.0.1:{broker.node_port}"
username = "{NODE}"
password = "{NODES[NODE]}"
ca_file = "{broker.ca}"
[backend]
prefer = "cpu"
""")
    return cfg


def edge_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def doctor_json(cfg: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = edge_agent("doctor", "--json", "--config", str(cfg), "--timeout", "3", *args)
    report = json.loads(r.stdout)
    return r.returncode, {c["name"]: c for c in report["checks"]}


@pytest.fixture
def daemon(shipped: ShippedBroker, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:  # noqa: F811
    """`edge-agent run` under the node's credentials (no model, no camera: it still keeps its broker link)."""
    cfg = node_config(shipped, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _connected_status(state_dir: Path) -> DaemonStatus | None:
    st = running_daemon(state_dir)
    return st if st is not None and st.connected else None


def test_doctor_and_check_run_beside_the_daemon_without_kicking_it(
        shipped: ShippedBroker, daemon: subprocess.Popen[str], tmp_path: Path) -> None:  # noqa: F811
    cfg, state = tmp_path / "node.toml", tmp_path / "state"
    watcher = Watcher(shipped)
    try:
        assert wait_for(lambda: status_path(state).exists() and json.loads(status_path(state).read_text())["connected"], 30), shipped.log.read_text()[-2000:]
        assert wait_for(lambda: b"online" in watcher.payloads(T.availability(NODE)), 10)
        st = running_daemon(state)
        assert st is not None and st.pid == daemon.pid and "pw-a" not in status_path(state).read_text()

        code, res = doctor_json(cfg)
        broker = res["broker"]
        assert broker["status"] == "ok", broker
        assert broker["detail"] == f"the running agent (pid {daemon.pid}) is connected to {st.broker_url}"
        assert broker["data"]["source"] == "daemon-status"
        r = edge_agent("check", "--config", str(cfg), "--skip-camera", "--timeout", "3")
        assert f"OK   broker: the running agent (pid {daemon.pid}) is connected" in r.stdout, r.stdout + r.stderr

        time.sleep(1.0)  # a takeover's will and the daemon's reconnect would show within this
        assert daemon.poll() is None
        assert b"offline" not in watcher.payloads(T.availability(NODE)), "the daemon's last will fired"
        log = shipped.log.read_text()
        assert "already connected, closing old connection" not in log
        assert log.count(f"as {NODE} ") == 1, "someone else logged in as the node"  # the daemon, once
        assert _connected_status(state) is not None
    finally:
        watcher.close()


def test_with_the_daemon_stopped_doctor_connects_itself(
        shipped: ShippedBroker, daemon: subprocess.Popen[str], tmp_path: Path) -> None:  # noqa: F811
    cfg, state = tmp_path / "node.toml", tmp_path / "state"
    assert wait_for(lambda: _connected_status(state) is not None, 30)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert not status_path(state).exists(), "a clean stop removes the status file"
    code, res = doctor_json(cfg, "--only", "broker")
    assert code == 0 and res["broker"]["status"] == "ok", res
    assert res["broker"]["detail"].startswith(f"connected to mqtts://127.0.0.1:{shipped.node_port} as {NODE}")
    assert "client_id" in res["broker"]["data"]


# ------------------------------------------------------------------------------------------ the file's rules


def ctx(tmp_path: Path, url: str = "mqtt://127.0.0.1:1", cls: type[DoctorContext] = DoctorContext) -> DoctorContext:
    return cls(cfg=load_config(None, state_dir=tmp_path, broker={"url": url}), host=HostRoot(Path("/")), timeout=1.0)


@pytest.fixture
def other_process() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def write_status(tmp_path: Path, pid: int, connected: bool, age: float = 0.0, error: str | None = None) -> None:
    st = DaemonStatus(pid=pid, started=time.time() - 100, broker_url="mqtt://127.0.0.1:1", connected=connected,
                      last_error=error, ts=time.time() - age)
    status_path(tmp_path).write_text(st.model_dump_json())


def broker_check(c: DoctorContext) -> Any:
    (res,) = run_checks(c, ["broker"])
    return res


def test_status_file_decides_whether_doctor_connects(tmp_path: Path, other_process: int) -> None:
    write_status(tmp_path, other_process, connected=False, error="broker refused connection: Not authorized")
    res = broker_check(ctx(tmp_path))
    assert res.status.value == "fail" and res.data["source"] == "daemon-status"
    assert res.detail == (f"the running agent (pid {other_process}) is not connected to mqtt://127.0.0.1:1: "
                          "broker refused connection: Not authorized")
    # --connect probes live (nothing listens on port 1)
    live = broker_check(ctx(tmp_path, cls=ConnectingContext))
    assert live.status.value == "fail" and "client_id" in live.data
    # stale (a hung or killed daemon) or a dead pid: doctor connects itself
    write_status(tmp_path, other_process, connected=True, age=120)
    assert "client_id" in broker_check(ctx(tmp_path)).data
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_status(tmp_path, dead.pid, connected=True)
    assert running_daemon(tmp_path) is None
    write_status(tmp_path, os.getpid(), connected=True)  # ourselves: never a daemon
    assert running_daemon(tmp_path) is None


def test_public_url_drops_credentials() -> None:
    assert public_url("mqtts://u:secret@broker.lan:8883") == "mqtts://broker.lan:8883"
    assert public_url("mqtt://broker.lan:1883") == "mqtt://broker.lan:1883"
