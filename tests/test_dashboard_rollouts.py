"""Staged rollouts through the dashboard's API, over real HTTP against a real Mosquitto and the real engine.

The nodes here are builder.dashboard.loadgen.SimNode (a retained NodeState, online): enough for the engine to
plan, claim, announce and obey pause / resume / abort; they never install anything, so no wave completes here.
tests/test_dashboard_rollout_browser.py drives a rollout to completion on real `edge-agent run` daemons.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from test_dashboard_server import AUTH, TOKEN, fleet_key, get
from test_dashboard_state import tiny_bundle

from agent.protocol.topics import Topics
from agent.security.signing import SigningKey
from builder.dashboard.audit import AuditLog, read
from builder.dashboard.auth import AccessPolicy
from builder.dashboard.link import FleetLink
from builder.dashboard.loadgen import SimNode
from builder.dashboard.rollout import PublishConfig
from builder.dashboard.rollouts import StagedRollouts
from builder.dashboard.server import Dashboard
from builder.dashboard.state import FleetState
from builder.fleet.devservices import LocalBroker
from builder.rollout.gates import Thresholds
from builder.rollout.state import RolloutSettings, new_state
from builder.rollout.store import RolloutStore

T = Topics("edgefleet")


def make_dash(broker: LocalBroker, tmp: Path) -> Dashboard:
    key = tmp / "keys" / "fleet.key"
    if not key.exists():
        key.parent.mkdir()
        SigningKey.generate().save(key)
    (tmp / "bundles").mkdir(exist_ok=True)
    state = FleetState(T)
    cfg = PublishConfig(broker.url, T, http_base="http://127.0.0.1:9/bundles", key=key)
    rollouts = StagedRollouts(cfg, tmp / "rollouts", settle_s=0.2).start()
    return Dashboard(state, FleetLink(broker.url, state).start(), [tmp / "bundles"], cfg, batch_s=0.05,
                     access=AccessPolicy(TOKEN), audit=AuditLog(tmp / "audit.jsonl"), rollouts=rollouts).start()


@pytest.fixture
def dash(mqtt_broker: LocalBroker, tmp_path: Path) -> Iterator[Dashboard]:
    d = make_dash(mqtt_broker, tmp_path)
    yield d
    d.stop()


def post(d: Dashboard, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    c.request("POST", path, body=json.dumps(body),
              headers={"Content-Type": "application/json", "Origin": d.url, **AUTH})
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def rollouts(d: Dashboard) -> list[dict[str, Any]]:
    status, body, _ = get(d, "/api/rollouts")
    assert status == 200
    return list(json.loads(body)["rollouts"])


def bundle_id(d: Dashboard, rel: str) -> str:
    return next(b["id"] for b in json.loads(get(d, "/api/bundles")[1])["bundles"] if b["rel"] == rel)


def test_a_staged_start_is_refused_for_untrusted_bundles_bad_waves_and_empty_targets(dash: Dashboard) -> None:
    root = dash.bundle_roots[0]
    tiny_bundle(root / "stranger-v3", "shapes", 3, SigningKey.generate())
    tiny_bundle(root / "unsigned-v4", "shapes", 4)
    (root / "unsigned-v4" / "manifest.sig").unlink()
    tiny_bundle(root / "good-v2", "shapes", 2, fleet_key(dash))
    for rel, why in (("stranger-v3", "unknown signing key"), ("unsigned-v4", "manifest.sig")):
        status, out = post(dash, "/api/rollouts/start", {"bundle": bundle_id(dash, rel), "waves": "1,rest"})
        assert status == 400 and "refused" in out["error"] and why in out["error"], out
    good = bundle_id(dash, "good-v2")
    for body, why in (({"waves": "rest,1"}, "last wave"), ({"waves": "1", "soak": -1}, "soak"),
                      ({"waves": "1", "target": "node:n1"}, "all or group"),
                      ({"waves": "1", "target": "group:nobody"}, "no node of target")):
        status, out = post(dash, "/api/rollouts/start", {"bundle": good, **body})
        assert status == 400 and why in out["error"], (body, out)
    assert rollouts(dash) == [] and not list((dash.bundle_roots[0].parent / "rollouts").glob("*.json"))
    starts = [e for e in read(dash.audit.path) if e["action"] == "rollout-start"]  # type: ignore[union-attr]
    assert len(starts) == 6 and all(e["outcome"].startswith("error 400") for e in starts)


def _sim(broker: LocalBroker, *ids: str) -> list[SimNode]:
    nodes = [SimNode(broker.url, n, T, groups=["lab"]) for n in ids]
    for n in nodes:
        n.announce_online()
    return nodes


def test_the_dashboard_runs_a_staged_rollout_and_obeys_pause_resume_abort(
        dash: Dashboard, mqtt_broker: LocalBroker) -> None:
    sims = _sim(mqtt_broker, "sim-1", "sim-2")
    try:
        tiny_bundle(dash.bundle_roots[0] / "good-v2", "shapes", 2, fleet_key(dash))
        assert dash.rollouts is not None and dash.rollouts.link is not None
        assert wait_for(lambda: len(dash.rollouts.link.known()) == 2, 10)  # type: ignore[union-attr]
        status, out = post(dash, "/api/rollouts/start", {"bundle": bundle_id(dash, "good-v2"), "waves": "1,rest",
                                                          "target": "group:lab", "soak": 1, "max_latency_ratio": None})
        assert status == 200 and out["waves"] == [["sim-1"], ["sim-2"]], out
        rid = out["id"]
        assert wait_for(lambda: rollouts(dash)[0]["nodes"][0]["status"] == "announced", 10)
        r = rollouts(dash)[0]
        assert r["runner"]["ours"] and not r["readonly"] and r["phase"] == "running"
        assert [(w["size"], w["state"]) for w in r["waves"]] == [(1, "running"), (1, "pending")]
        assert r["gates"]["soak_s"] == 1 and r["gates"]["max_latency_ratio"] is None
        assert post(dash, "/api/rollouts/start", {"bundle": bundle_id(dash, "good-v2"), "waves": "1"})[0] == 409

        for action, phase in (("pause", "paused"), ("resume", "running")):
            status, out = post(dash, f"/api/rollouts/{action}", {"id": rid})
            assert status == 200 and "requested from the runner dashboard@" in out["message"], out
            assert wait_for(lambda p=phase: rollouts(dash)[0]["phase"] == p, 5), rollouts(dash)[0]
        status, out = post(dash, "/api/rollouts/abort", {"id": rid, "rollback": True})
        assert status == 200
        assert wait_for(lambda: rollouts(dash)[0]["phase"] == "aborted" and rollouts(dash)[0]["runner"] is None, 10)
        assert rollouts(dash)[0]["nodes"][1]["status"] == "waiting"  # wave 2 never announced
        assert post(dash, "/api/rollouts/resume", {"id": rid})[0] == 409  # over: start a new one
        audit = [(e["action"], e["outcome"]) for e in read(dash.audit.path)]  # type: ignore[union-attr]
        assert [a for a in audit if a[1] == "ok"] == [("rollout-start", "ok"), ("rollout-pause", "ok"),
                                                      ("rollout-resume", "ok"), ("rollout-abort", "ok")]
        e = [e for e in read(dash.audit.path) if e["action"] == "rollout-abort"][-1]  # type: ignore[union-attr]
        assert (e["rollout"], e["rollback"], e["who"]) == (rid, True, dash.access.token_id)
    finally:
        for n in sims:
            n.stop()


def _record(store: RolloutStore, tmp: Path, broker: LocalBroker) -> str:
    bundle = tiny_bundle(tmp / "b-v5", "shapes", 5, SigningKey.generate())
    s = RolloutSettings(bundle=str(bundle), broker=broker.url, key=str(tmp / "keys" / "fleet.key"),
                        http_base="http://127.0.0.1:9/", waves_spec="1,rest")
    st = new_state(f"shapes-v5-{time.time_ns()}", "shapes", 5, s, [["sim-1"], ["sim-2"]], Thresholds(soak_s=1))
    store.save(st)
    store.set_current(st.id)
    return st.id


def test_a_rollout_run_by_another_process_is_read_only_and_controlled_by_requests(
        dash: Dashboard, mqtt_broker: LocalBroker, tmp_path: Path) -> None:
    assert dash.rollouts is not None
    store = dash.rollouts.store
    rid = _record(store, tmp_path, mqtt_broker)
    cli = store.claim(rid, owner="cli-host-1234")
    cli.acquire()  # as a live `edge-builder rollout start` holds it
    r = rollouts(dash)[0]
    assert r["readonly"] and r["runner"]["owner"] == "cli-host-1234" and not r["runner"]["ours"]
    status, out = post(dash, "/api/rollouts/pause", {"id": rid})
    assert status == 200 and "requested from the runner cli-host-1234" in out["message"]
    assert store.take_request(rid) == {"action": "pause", "rollback": False, "ts": pytest.approx(time.time(), abs=5)}
    assert post(dash, "/api/rollouts/abort", {"id": rid, "rollback": True})[0] == 200
    assert (store.take_request(rid) or {})["rollback"] is True
    assert store.claim(rid).holder()["owner"] == "cli-host-1234"  # type: ignore[index]  # never taken over
    assert rollouts(dash)[0]["phase"] == "running"  # the owner applies requests, not the dashboard


def test_an_unfinished_rollout_nobody_runs_is_resumed_when_the_dashboard_starts(
        mqtt_broker: LocalBroker, tmp_path: Path) -> None:
    d = make_dash(mqtt_broker, tmp_path)  # makes the key the record names
    d.stop()
    rid = _record(RolloutStore(tmp_path / "rollouts"), tmp_path, mqtt_broker)
    d = make_dash(mqtt_broker, tmp_path)
    try:
        assert d.rollouts is not None
        r = rollouts(d)[0]
        assert r["id"] == rid and r["runner"]["ours"] and r["phase"] == "running"
    finally:
        d.stop()
    assert RolloutStore(tmp_path / "rollouts").claim(rid).holder() is None  # released; the record stays
    assert RolloutStore(tmp_path / "rollouts").load(rid).phase == "running"


def test_fleet_command_requests_are_checked_and_a_silent_node_is_reported(
        dash: Dashboard, mqtt_broker: LocalBroker) -> None:
    for body, why in (({"command": "pin", "nodes": ["sim-1"]}, "version"),
                      ({"command": "inventory", "nodes": ["sim-1"], "group": "lab"}, "either"),
                      ({"command": "inventory", "nodes": []}, "no node selected"),
                      ({"command": "inventory", "nodes": ["a/#"]}, "invalid"),
                      ({"command": "reboot", "nodes": ["sim-1"]}, "command"),
                      ({"command": "inventory", "group": "nobody"}, "no node of group")):
        status, out = post(dash, "/api/command", body)
        assert status == 400 and why in out["error"], (body, out)
    sims = _sim(mqtt_broker, "sim-1")  # a simulated node answers no command
    try:
        assert wait_for(lambda: dash.rollouts.link.known(), 10)  # type: ignore[union-attr]
        status, out = post(dash, "/api/command", {"command": "status", "group": "lab", "timeout": 0.5})
        assert status == 200 and [(o["node"], o["ok"]) for o in out["outcomes"]] == [("sim-1", None)], out
        assert "no reply" in out["outcomes"][0]["error"]
    finally:
        for n in sims:
            n.stop()
    e = read(dash.audit.path)[-1]  # type: ignore[union-attr]
    assert (e["action"], e["outcome"], e["target"], e["replies"]) == ("command", "ok", "group:lab", {"sim-1": None})
