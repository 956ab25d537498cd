"""The dashboard server over a real Mosquitto: SSE snapshot + deltas, fault isolation, rollout publishing.
Every request is a real HTTP request on loopback, authenticated with the login token (tests/test_dashboard_access.py
refuses the unauthenticated ones).

Nodes here are builder.dashboard.loadgen SimNodes: SIMULATED nodes speaking the real payload models over
the real broker (their figures are made up; nothing is measured). The real agents are in the browser test.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from test_dashboard_state import tiny_bundle

from agent.protocol.manifest import Manifest, Target
from agent.protocol.messages import Announcement
from agent.protocol.topics import Topics
from agent.security.signing import Keyring, SigningKey
from builder.dashboard.audit import AuditLog
from builder.dashboard.auth import AccessPolicy
from builder.dashboard.link import FleetLink, LinkError
from builder.dashboard.loadgen import SimNode
from builder.dashboard.rollout import PublishConfig
from builder.dashboard.server import Dashboard, wait_until
from builder.dashboard.state import FleetState
from builder.fleet.devservices import LocalBroker

T = Topics("edgefleet")
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class SSE:
    """A minimal Server-Sent Events reader over http.client (what the page's EventSource does)."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("GET", "/api/events", headers=AUTH if headers is None else headers)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200 and self.resp.getheader("Content-Type") == "text/event-stream"

    def next(self) -> dict[str, Any]:
        data = None
        while True:
            line = self.resp.fp.readline()
            if not line:
                raise EOFError("stream closed")
            if line.startswith(b"data: "):
                data = json.loads(line[6:])
            elif line == b"\n" and data is not None:
                return data

    def until(self, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = self.next()
            if pred(ev):
                return ev
        raise AssertionError("no matching event in time")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def dash(mqtt_broker: LocalBroker, tmp_path: Path) -> Iterator[Dashboard]:
    key = tmp_path / "keys" / "fleet.key"
    key.parent.mkdir()
    SigningKey.generate().save(key)
    state = FleetState(T)
    link = FleetLink(mqtt_broker.url, state).start()
    cfg = PublishConfig(mqtt_broker.url, T, http_base="http://127.0.0.1:9/bundles", key=key)
    d = Dashboard(state, link, [tmp_path / "bundles"], cfg, batch_s=0.05, access=AccessPolicy(TOKEN),
                  audit=AuditLog(tmp_path / "audit.jsonl")).start()
    yield d
    d.stop()


def node(broker: LocalBroker, node_id: str, groups: list[str] | None = None) -> SimNode:
    n = SimNode(broker.url, node_id, T, groups=groups or ["lab"])
    n.announce_online()
    return n


def by_id(ev: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in ev["nodes"]}


def fleet_key(d: Dashboard) -> SigningKey:
    assert d.publish_cfg.key is not None
    return SigningKey.load(d.publish_cfg.key)


def post(d: Dashboard, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """A POST as the logged-in page sends it (token, same Origin); `headers` override."""
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=20)
    c.request("POST", "/api/rollout", body=json.dumps(body),
              headers={"Content-Type": "application/json", "Origin": d.url, **AUTH, **(headers or {})})
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def get(d: Dashboard, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    c.request("GET", path, headers=AUTH if headers is None else headers)
    r = c.getresponse()
    out = r.status, r.read(), r.getheader("Content-Type") or ""
    c.close()
    return out


def test_sse_pushes_changes_and_a_faulty_node_leaves_the_rest_working(dash: Dashboard,
                                                                      mqtt_broker: LocalBroker) -> None:
    a, b = node(mqtt_broker, "node-a"), node(mqtt_broker, "node-b")
    try:
        sse = SSE(dash.port)
        first = sse.next()
        assert first["type"] == "snapshot"
        a.publish_telemetry()
        b.publish_telemetry()
        ev = sse.until(lambda e: {"node-a", "node-b"} <= {n["id"] for n in e["nodes"] if n["telemetry"]})
        assert ev["type"] == "delta"
        b.publish_raw("telemetry", b'{"node": "node-b", "latency_ms": "fast"')  # truncated JSON
        ev = sse.until(lambda e: by_id(e).get("node-b", {}).get("faults"))
        assert "not JSON" in by_id(ev)["node-b"]["faults"]["telemetry"]
        # The page still gets node-a's new figures, and node-a is not faulty.
        a.publish_telemetry()
        a.publish_detections()
        ev = sse.until(lambda e: "node-a" in by_id(e) and by_id(e)["node-a"]["detections_frame"] is not None)
        na = by_id(ev)["node-a"]
        assert not na["faults"] and na["online"] is True and na["model_version"] == 1 and na["hist"]
        # A node that dies without a goodbye: the broker fires its last will and the page sees offline.
        a.client._sock.close()  # type: ignore[union-attr]  # abrupt: no DISCONNECT, so the LWT is sent
        ev = sse.until(lambda e: by_id(e).get("node-a", {}).get("online") is False, timeout=60)
        sse.close()
        status, body, _ = get(dash, "/api/state")
        snap = json.loads(body)
        assert status == 200 and snap["stats"]["rejected"] == 1
    finally:
        for n in (a, b):
            n.client.loop_stop()


def test_rollout_from_the_api_publishes_a_signed_retained_announcement(dash: Dashboard,
                                                                       mqtt_broker: LocalBroker) -> None:
    assert dash.publish_cfg.key is not None
    root = dash.bundle_roots[0]
    tiny_bundle(root / "shapes-v2", "shapes", 2, fleet_key(dash))
    tiny_bundle(root / "shapes-v3", "shapes", 3, fleet_key(dash))
    status, body, _ = get(dash, "/api/bundles")
    listing = json.loads(body)
    assert status == 200 and listing["problem"] is None
    v2 = next(b for b in listing["bundles"] if b["version"] == 2)

    got: list[mqtt.MQTTMessage] = []
    seen = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        got.append(m)
        seen.set()

    sub.on_message = on_message
    sub.connect(mqtt_broker.host, mqtt_broker.port)
    sub.loop_start()
    try:
        status, out = post(dash, {"bundle": v2["id"], "target": "group:lab"})
        assert status == 200 and out["ok"], out
        assert out["topic"] == T.announce(Target(kind="group", value="lab"))
        sub.subscribe(out["topic"], qos=1)  # after the publish: the announcement must be retained
        assert seen.wait(10)
    finally:
        sub.disconnect()
        sub.loop_stop()
    msg = got[0]
    assert msg.retain
    ann = Announcement.model_validate_json(msg.payload)
    ring = Keyring.load(dash.publish_cfg.key.with_suffix(".pub"))
    ring.verify(ann.manifest_bytes(), ann.key_id, ann.signature())  # raises if not signed by the fleet key
    m = Manifest.model_validate_json(ann.manifest_bytes())
    assert (m.name, m.version, str(m.target)) == ("shapes", 2, "group:lab")
    # Only re-targeted: every file entry is the one the trusted builder signed.
    assert m.files == Manifest.model_validate_json((root / "shapes-v2" / "manifest.json").read_bytes()).files
    assert ann.base_url.rstrip("/") == "http://127.0.0.1:9/bundles/shapes-v2"
    assert wait_until(lambda: len(dash.state.rollouts()) == 1, 5)
    assert dash.state.rollouts()[0]["target"] == "group:lab"


def test_rollout_refuses_bad_requests_with_clear_errors(dash: Dashboard, tmp_path: Path) -> None:
    root = dash.bundle_roots[0]
    tiny_bundle(root / "shapes-v2", "shapes", 2, fleet_key(dash))
    bid = json.loads(get(dash, "/api/bundles")[1])["bundles"][0]["id"]
    assert post(dash, {"bundle": "nope"}) == (400, {"ok": False, "error": "unknown bundle id 'nope'; reload the bundle list"})
    status, out = post(dash, {"bundle": bid, "target": "group:"})
    assert status == 400 and "target must be" in out["error"]
    status, out = post(dash, {"bundle": bid, "target": "node:a/b"})
    assert status == 400 and "invalid" in out["error"]
    status, out = post(dash, {"bundle": bid}, headers={"Origin": "http://evil.example"})
    assert status == 403
    status, out = post(dash, {"target": "all"})
    assert status == 400
    c = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
    c.request("POST", "/api/rollout", body="bundle=x",
              headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": dash.url, **AUTH})
    assert c.getresponse().status == 415
    c.close()
    # A bundle whose file no longer matches its manifest is refused by builder.fleet.publish, not announced.
    (root / "shapes-v2" / "model_cpu.tflite").write_bytes(b"tampered")
    status, out = post(dash, {"bundle": bid, "target": "all"})
    assert status == 400 and "model_cpu.tflite" in out["error"]
    assert dash.state.rollouts() == []
    # Without a signing key rollout is disabled, and the page is told why.
    dash.publish_cfg = PublishConfig(dash.publish_cfg.broker_url, T, http_base="http://x")
    assert "no --key" in json.loads(get(dash, "/api/bundles")[1])["problem"]


def test_broker_outage_is_pushed_to_the_page_and_the_link_recovers(dash: Dashboard,
                                                                    mqtt_broker: LocalBroker) -> None:
    sse = SSE(dash.port)
    assert sse.next()["stats"]["broker"] is True
    mqtt_broker.stop()
    ev = sse.until(lambda e: e["stats"]["broker"] is False)
    assert ev["stats"]["broker_error"]
    mqtt_broker.start()
    sse.until(lambda e: e["stats"]["broker"] is True, timeout=20)
    # Subscriptions are renewed on reconnect: a node appearing now is seen.
    n = node(mqtt_broker, "late")
    try:
        sse.until(lambda e: "late" in by_id(e), timeout=10)
    finally:
        n.stop()
        sse.close()


def test_page_and_routes(dash: Dashboard) -> None:
    status, body, ctype = get(dash, "/")
    assert status == 200 and ctype.startswith("text/html") and b"/static/app.js" in body
    status, body, ctype = get(dash, "/static/app.js")
    assert status == 200 and ctype.startswith("text/javascript") and b"EventSource" in body
    assert get(dash, "/static/../server.py")[0] == 404
    assert get(dash, "/static/.hidden")[0] == 404
    assert get(dash, "/api/snapshot/nobody")[0] == 404
    assert get(dash, "/nope")[0] == 404
    status, body, _ = get(dash, "/healthz")
    assert status == 200 and json.loads(body)["broker"] is True


def test_link_reports_an_unreachable_broker() -> None:
    from builder.fleet.devservices import free_port

    with pytest.raises(LinkError, match="cannot reach broker|did not accept"):
        FleetLink(f"mqtt://127.0.0.1:{free_port()}", FleetState(T)).start(timeout=3)
    with pytest.raises(LinkError, match="broker url"):
        FleetLink("http://example", FleetState(T))
