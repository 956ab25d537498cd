"""`edge-builder fleet rollback|pin|unpin|inventory|status` and builder.fleet.commands against a real Mosquitto
and two real nodes: each a real updater + model store + CommandsHandler on its own paho MQTT v5 client, running
a real TFLite model on a frame loop (tests/helpers_updates.NodeHarness), v1 then v2 shipped by a real
signed announcement over a real HTTP server. One fleet for the module: the tests set the state they need."""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for
from helpers_updates import NodeHarness, Watcher, make_bundle, publish, write_video

from agent.protocol.messages import CommandRequest, ModelRef, NodeState
from agent.protocol.topics import Topics
from agent.security.signing import SigningKey
from builder.commands import fleet
from builder.fleet.commands import CommandOutcome, request_for, select_nodes, send_command
from builder.fleet.devservices import FileServer, LocalBroker, find_mosquitto
from builder.rollout.link import NodeSeen, RolloutLink

T = Topics("edgefleet")


@dataclass
class Fleet:
    broker: LocalBroker
    nodes: dict[str, NodeHarness]
    watcher: Watcher

    def running(self, node: str) -> int:
        return int(self.nodes[node].loop.engine.model_version)

    def pinned(self, node: str) -> int | None:
        return self.nodes[node].updater.state.pinned


@pytest.fixture(scope="module")
def fleet2(tmp_path_factory: pytest.TempPathFactory, coral_data: Path) -> Iterator[Fleet]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    tmp = tmp_path_factory.mktemp("fleet")
    broker = LocalBroker(tmp / "mosquitto").start()
    http = FileServer(tmp / "www").start()
    key = SigningKey.generate()
    (tmp / "keys").mkdir()
    pub = key.save(tmp / "keys" / "fleet.key")
    (tmp / "trusted").mkdir()
    shutil.copy(pub, tmp / "trusted" / "fleet.pub")
    v1 = make_bundle(tmp / "bundle-v1", key, 1)
    video = write_video(tmp / "camera.avi")
    nodes = {name: NodeHarness(state_dir=tmp / name, keys_dir=tmp / "trusted", broker_host=broker.host,
                               broker_port=broker.port, video=video, initial_bundle=v1, node=name,
                               groups=groups).start()
             for name, groups in (("node-a", ["lab"]), ("node-b", ["lab", "yard"]))}
    watcher = Watcher(broker.host, broker.port)
    f = Fleet(broker, nodes, watcher)
    try:
        publish(make_bundle(tmp / "bundle-v2", key, 2), broker.url, tmp / "keys" / "fleet.key", http.root,
                http.base_url)
        assert wait_for(lambda: all(f.running(n) == 2 for n in nodes) and all(
            n.updater.state.committed[-1].version == 2 for n in nodes.values()), timeout=30), "v2 not committed"
        yield f
    finally:
        watcher.close()
        for n in nodes.values():
            n.stop()
        http.stop()
        broker.stop()


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edge-builder")
    fleet.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def cli_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, dict[str, Any]]]:
    code = run([*argv, "--json"])
    return code, {o["node"]: o for o in json.loads(capsys.readouterr().out)}


class WireTap:
    """A plain subscriber to every node's cmd topic: what the builder really sends."""

    def __init__(self, broker: LocalBroker) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: (c.subscribe(T.all_nodes("cmd"), 1), ready.set())
        self.client.on_message = lambda c, u, m: self.seen.append((m.topic, json.loads(m.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(5)
        time.sleep(0.2)  # the SUBACK

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_inventory_to_two_nodes(fleet2: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    url = fleet2.broker.url
    code, out = cli_json(capsys, ["fleet", "inventory", "--node", "node-a", "--node", "node-b", "--broker", url])
    assert code == 0 and set(out) == {"node-a", "node-b"}
    for o in out.values():
        assert o["ok"] is True and o["error"] is None and 0 < o["seconds"] < 10
        assert [v["version"] for v in o["result"]["versions"]] == [1, 2]
    assert run(["fleet", "inventory", "--all", "--broker", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NODE", "RESULT", "TIME", "DETAIL"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"node-a", "node-b"}
    assert all(r.split()[1] == "ok" and "installed v1 v2" in r for r in rows.values())


def test_rollback_pin_unpin(fleet2: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    url = fleet2.broker.url
    tap = WireTap(fleet2.broker)
    try:
        code, out = cli_json(capsys, ["fleet", "pin", "--version", "2", "--group", "lab", "--broker", url])
        assert code == 0 and {o["result"]["pinned"] for o in out.values()} == {2}
        assert all(fleet2.running(n) == 2 and fleet2.pinned(n) == 2 for n in fleet2.nodes)
        code, out = cli_json(capsys, ["fleet", "rollback", "--node", "node-a", "--node", "node-b", "--broker", url])
        assert code == 0, out
        assert all(o["result"]["running"]["version"] == 1 for o in out.values())
        assert fleet2.running("node-a") == fleet2.running("node-b") == 1
        code, out = cli_json(capsys, ["fleet", "unpin", "--node", "node-a", "--broker", url])
        assert code == 0 and out["node-a"]["result"]["pinned"] is None and fleet2.pinned("node-a") is None
        # unpin goes out as the old wire form, `pin` without a version, so agents that predate unpin obey it.
        assert ("edgefleet/node/node-a/cmd", {"command": "pin"}) in tap.seen
        code, out = cli_json(capsys, ["fleet", "status", "--node", "node-a", "--node", "node-b", "--broker", url])
        assert code == 0 and out["node-a"]["result"]["pinned"] is None and out["node-b"]["result"]["pinned"] is not None
        # A version not on disk: the node says why, the command exits 3, nothing changes.
        assert run(["fleet", "pin", "--version", "7", "--node", "node-b", "--broker", url]) == 3
        row = capsys.readouterr().out.splitlines()[1]
        assert row.split()[:2] == ["node-b", "failed"] and "v7 is not on disk" in row
        # Newer builders' own spelling reaches newer agents too.
        unpin = fleet2.watcher.command("node-b", {"command": "unpin"})
        assert unpin["ok"] and unpin["command"] == "unpin" and fleet2.pinned("node-b") is None
        code, out = cli_json(capsys, ["fleet", "pin", "--version", "2", "--all", "--broker", url])
        assert code == 0 and all(fleet2.running(n) == 2 for n in fleet2.nodes)
    finally:
        tap.close()
        for n in fleet2.nodes:
            fleet2.watcher.command(n, {"command": "unpin"})


def test_a_node_that_does_not_reply(fleet2: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    url = fleet2.broker.url
    t0 = time.monotonic()
    code, out = cli_json(capsys, ["fleet", "inventory", "--node", "node-a", "--node", "ghost", "--timeout", "1.5",
                                  "--broker", url])
    assert code == 3 and out["node-a"]["ok"] is True
    assert out["ghost"]["ok"] is None and "no reply" in out["ghost"]["error"]
    assert time.monotonic() - t0 < 6
    assert run(["fleet", "status", "--node", "ghost", "--timeout", "0.5", "--broker", url]) == 3
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["ghost", "no", "reply"]
    link = RolloutLink(url, T).start()
    try:  # the library: all nodes in parallel under one deadline, outcomes in the order asked
        t0 = time.monotonic()
        got = send_command(link, ["ghost", "node-b", "ghost-2"], "status", timeout=1.0)
        assert time.monotonic() - t0 < 2.5
        assert [o.node for o in got] == ["ghost", "node-b", "ghost-2"]
        assert [o.ok for o in got] == [None, True, None]
        assert isinstance(got[1], CommandOutcome) and got[1].result["running"]["version"] == fleet2.running("node-b")
    finally:
        link.stop()


def test_group_selection(fleet2: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    url = fleet2.broker.url
    code, out = cli_json(capsys, ["fleet", "status", "--group", "yard", "--broker", url])
    assert code == 0 and list(out) == ["node-b"]
    assert run(["fleet", "inventory", "--group", "nobody", "--broker", url]) == 3
    assert "no node selected" in capsys.readouterr().err
    # Down nodes (offline, stopped) are left out of a group or --all, never out of an explicit --node.
    st = NodeState(node="cam-9", status="running", agent_version="t", model=ModelRef(name="m", version=1),
                   groups=["yard"])
    known = [NodeSeen("node-b", True, st.model_copy(update={"node": "node-b"})), NodeSeen("cam-9", False, st),
             NodeSeen("cam-8", None, st.model_copy(update={"status": "stopped"})),
             NodeSeen("cam-1", None, st.model_copy(update={"groups": ["lab"]})), NodeSeen("cam-0")]
    assert select_nodes(known, group="yard") == ["node-b"]
    assert select_nodes(known, everyone=True) == ["cam-0", "cam-1", "node-b"]
    assert select_nodes(known, nodes=["cam-9", "cam-1", "cam-9"]) == ["cam-9", "cam-1"]
    for bad in ({}, {"group": "yard", "everyone": True}, {"nodes": ["a/b"]}, {"group": "+"}):
        with pytest.raises(ValueError):
            select_nodes(known, **bad)


def test_requests_and_argument_errors(fleet2: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert request_for("unpin") == {"command": "pin"}
    assert request_for("pin", 3) == {"command": "pin", "version": 3}
    for cmd, version in (("pin", None), ("rollback", 2), ("selfdestruct", None)):
        with pytest.raises(ValueError):
            request_for(cmd, version)  # type: ignore[arg-type]
    # Both spellings parse on the node; the old one still means unpin.
    assert CommandRequest.model_validate_json(b'{"command": "pin"}').version is None
    assert CommandRequest.model_validate_json(b'{"command": "unpin"}').command == "unpin"
    with pytest.raises(SystemExit):
        run(["fleet", "pin", "--node", "node-a", "--broker", fleet2.broker.url])  # pin needs --version
    with pytest.raises(SystemExit):
        run(["fleet", "rollback", "--node", "a", "--all", "--broker", fleet2.broker.url])
    assert run(["fleet", "inventory", "--node", "node-a", "--broker", "mqtt://127.0.0.1:1"]) == 1
    assert "error:" in capsys.readouterr().err
    # The status table (no selection) takes credentials in the URL; flags meant for commands are refused.
    assert run(["fleet", "status", "--broker", fleet2.broker.url, "--username", "ops"]) == 2
    assert "--node/--group/--all" in capsys.readouterr().err
