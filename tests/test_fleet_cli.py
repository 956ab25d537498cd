"""`edge-builder fleet status|watch` (and `dashboard`'s argument errors) against a real Mosquitto.

Nodes are builder.dashboard.loadgen SimNodes: SIMULATED nodes speaking the real payload models (made-up
figures). The command modules are registered on a bare parser so this test needs only them.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator

import pytest
from test_dashboard_state import update_msg

from agent.protocol.messages import UpdateState
from agent.protocol.topics import Topics
from builder.commands import dashboard, fleet
from builder.dashboard.loadgen import SimNode
from builder.fleet.devservices import LocalBroker, free_port

T = Topics("edgefleet")


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edge-builder")
    sub = parser.add_subparsers(dest="command")
    fleet.register(sub)
    dashboard.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def nodes(mqtt_broker: LocalBroker) -> Iterator[tuple[SimNode, SimNode]]:
    """Two simulated nodes; telemetry every 0.2 s from a thread (it is not retained, status must catch it)."""
    a = SimNode(mqtt_broker.url, "node-a", T, groups=["lab"])
    b = SimNode(mqtt_broker.url, "node-b", T, groups=["lab"])
    for n in (a, b):
        n.announce_online()
    b.publish_raw("update", update_msg("node-b", 2, UpdateState.COMMITTED), retain=True)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.2):
            for n in (a, b):
                n.publish_telemetry(0.2)

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    yield a, b
    stop.set()
    t.join()
    for n in (a, b):
        n.stop()


def test_fleet_status_prints_every_node(mqtt_broker: LocalBroker, nodes: tuple[SimNode, SimNode],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    a, b = nodes
    assert run(["fleet", "status", "--broker", mqtt_broker.url, "--wait", "0.6"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["NODE", "STATUS"]
    rows = {line.split()[0]: line for line in out[1:3]}
    assert rows["node-a"].split()[1:4] == ["running", "shapes", "v1"]
    assert "v2 committed" in rows["node-b"] and " est " in rows["node-a"]
    assert run(["fleet", "status", "--broker", mqtt_broker.url, "--wait", "0.6", "--json"]) == 0
    data = {n["id"]: n for n in json.loads(capsys.readouterr().out)}
    assert data["node-a"]["model_version"] == 1 and data["node-b"]["update"]["state"] == "committed"
    assert data["node-a"]["telemetry"]["power_estimated"] is True
    # An offline node makes `status` exit 3 (for scripts and cron), and the table says so.
    b.publish_raw("availability", b"offline", retain=True)
    assert run(["fleet", "status", "--broker", mqtt_broker.url, "--wait", "0.6"]) == 3
    assert "node-b  offline" in capsys.readouterr().out


def test_fleet_watch_prints_events_when_piped(mqtt_broker: LocalBroker, nodes: tuple[SimNode, SimNode],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    a, b = nodes

    def later() -> None:
        time.sleep(0.8)
        b.publish_raw("update", update_msg("node-b", 3, UpdateState.DOWNLOADING, 0.5))
        b.publish_raw("telemetry", b"[]")
        a.stop()  # graceful: publishes offline

    t = threading.Thread(target=later)
    t.start()
    assert run(["fleet", "watch", "--broker", mqtt_broker.url, "--interval", "0.2", "--duration", "2.5"]) == 0
    t.join()
    out = capsys.readouterr().out
    assert "node-a seen: running, model shapes v1" in out
    assert "node-b update v3 downloading" in out
    assert "node-b FAULT telemetry: telemetry is a JSON list, not an object" in out
    assert "node-a offline" in out


def test_cli_errors_are_clear(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    assert run(["fleet", "status", "--broker", url, "--wait", "0"]) == 1
    assert "error: cannot reach broker" in capsys.readouterr().err
    assert run(["dashboard", "--broker", url, "--bundles", "/nonexistent/dir"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert run(["dashboard", "--broker", "ftp://x"]) == 1
    assert "broker url must look like" in capsys.readouterr().err
