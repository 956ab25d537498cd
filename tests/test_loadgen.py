"""The load generator's simulated nodes answer announcements as a real node reports them, over a real Mosquitto.

A SimNode with `update_delay_s` takes a signed announcement on its own topic (or announce/all, or its group) to a
retained `committed` UpdateStatus and a retained NodeState running the new version (what a rollout engine and the
dashboard read); an announcement for another node, an older version, or garbage is not installed; nodes
without `update_delay_s` (the default) ignore announcements.
"""

from __future__ import annotations

import time
from pathlib import Path

from helpers import wait_for

from agent.protocol.manifest import Target
from agent.protocol.messages import UpdateState
from agent.protocol.topics import Topics
from agent.security.keys import SigningKey
from builder.dashboard.link import FleetLink
from builder.dashboard.loadgen import Later, SimFleet, SimNode, sim_bundle
from builder.dashboard.state import FleetState
from builder.fleet.devservices import LocalBroker
from builder.fleet.publish import make_announcement, prepare

T = Topics("edgefleet")


def announcement(bundle: Path, key: SigningKey, target: Target) -> bytes:
    _, data, _ = prepare(bundle, target, key)
    return make_announcement(data, key, "http://127.0.0.1:9/b/").model_dump_json().encode()


def test_sim_nodes_answer_announcements_like_a_node(mqtt_broker: LocalBroker, tmp_path: Path) -> None:
    key = SigningKey.generate()
    v2 = sim_bundle(tmp_path / "v2", "shapes", 2, key)
    state = FleetState(T)
    link = FleetLink(mqtt_broker.url, state, client_id="test-loadgen").start()
    fleet = SimFleet(mqtt_broker.url, 3, T, interval_s=0.5, update_delay_s=0.3).start()
    quiet = SimNode(mqtt_broker.url, "quiet", T)  # the default: announcements are not its business
    quiet.announce_online()
    try:
        assert wait_for(lambda: len(state.nodes()) == 4 and all(n.model_version == 1 for n in state.nodes()), 10)
        a, b, _ = fleet.nodes
        t0 = time.monotonic()
        a.client.publish(T.announce(Target(kind="node", value=b.node_id)),
                         announcement(v2, key, Target(kind="node", value=a.node_id)), qos=1, retain=True)
        a.client.publish(T.announce(Target(kind="node", value=a.node_id)),
                         announcement(v2, key, Target(kind="node", value=a.node_id)), qos=1, retain=True)
        assert wait_for(lambda: (n := state.node(a.node_id)) is not None and n.model_version == 2, 10)
        assert time.monotonic() - t0 >= 0.3  # after the delay, as a download and trial would take
        n = state.node(a.node_id)
        assert n is not None and n.update is not None
        assert (n.update.state, n.update.version, n.update.name) == (UpdateState.COMMITTED, 2, "shapes")
        # b got a copy of a's announcement on its own topic: the signed target is a, so b stays at v1.
        time.sleep(0.5)
        nb = state.node(b.node_id)
        assert nb is not None and nb.model_version == 1 and nb.update is None
        # Garbage on announce/all: every answering node reports it rejected, none installs anything.
        a.client.publish(T.announce(Target()), b"{not json", qos=1, retain=True)
        assert wait_for(lambda: all((x := state.node(s.node_id)) is not None and x.update is not None
                                    and x.update.state == UpdateState.REJECTED for s in fleet.nodes[1:]), 10)
        q = state.node("quiet")
        assert q is not None and q.update is None and q.model_version == 1
        assert [x.model_version for x in state.nodes() if x.id != "quiet"] == [2, 1, 1]
        fleet.stop()  # every node says offline (retained), all at once
        assert wait_for(lambda: [x.online for x in state.nodes()] == [True, False, False, False], 5)
    finally:
        fleet.stop()
        quiet.stop()
        link.stop()


def test_later_runs_callbacks_in_time_order() -> None:
    later, got = Later(), []
    later.call(0.2, lambda: got.append("b"))
    later.call(0.05, lambda: got.append("a"))
    later.call(0.1, lambda: 1 / 0)  # a failing callback does not stop the others
    assert wait_for(lambda: got == ["a", "b"], 5)
