"""The dashboard shows each node's latest shadow run (the retained ShadowReport, docs/SHADOW.md, docs/DASHBOARD.md).

The reports are built the node's way: `agent.inference.agreement.AgreementWindow` over hand-made live and
candidate boxes, `latency_stats` over latencies, `ShadowReport` JSON. State and table first (no broker), then a
real Mosquitto with the dashboard server on loopback (a report retained on the topic reaches `/api/state`; bad
ones are faults of their node only and the server keeps serving), then one look at the row in headless Chromium.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_dashboard_browser import browser  # noqa: F401 - the Chromium fixture
from test_dashboard_server import SSE, TOKEN, by_id, dash, get  # noqa: F401 - the dashboard fixture

from agent.inference.agreement import AgreementWindow, latency_stats
from agent.protocol.messages import Detection, ModelRef
from agent.protocol.shadow import ShadowReport, ShadowState
from agent.protocol.topics import Topics
from builder.dashboard.server import Dashboard, wait_until
from builder.dashboard.shadow_view import MAX_CLASSES, MAX_REPORT_BYTES
from builder.dashboard.state import FleetState, dumps
from builder.dashboard.table import changes, format_table
from builder.fleet.devservices import LocalBroker

T = Topics("edgefleet")
LEAF = "shadow/report"


def det(box: tuple[float, float, float, float], name: str, score: float = 0.9) -> Detection:
    return Detection(box=box, class_id=0, class_name=name, score=score)


def report(node: str, state: ShadowState = ShadowState.RUNNING, frames: int = 10, extra_classes: int = 0) -> bytes:
    """Per frame: the live model finds a circle and a square; the candidate finds both (the square shifted,
    IoU 0.8) and a triangle the live model does not: precision 2/3, recall 1, F1 0.8."""
    w = AgreementWindow()
    for _ in range(frames):
        live = [det((.1, .1, .3, .3), "circle"), det((.5, .5, .7, .7), "square", .8)]
        cand = [det((.1, .1, .3, .3), "circle", .85), det((.5, .5, .7, .68), "square", .7),
                det((.8, .1, .9, .2), "triangle", .6)]
        w.add(live, cand)
    for i in range(extra_classes):  # classes only the candidate saw once
        w.add([], [det((.1, .1, .2, .2), f"extra-{i:02d}")])
    return ShadowReport(
        node=node, request_id="shadow-1", state=state, live=ModelRef(name="shapes", version=3),
        candidate=ModelRef(name="shapes", version=4), started=datetime.now(UTC), window_s=12.5,
        agreement=w.summary(), candidate_latency=latency_stats([0.020, 0.022, 0.030, 0.044]),
        live_latency=latency_stats([0.005, 0.005, 0.006, 0.008]), shadow_frames=frames, shadow_rate_hz=0.8,
    ).model_dump_json().encode()


# ---- state and terminal table (no broker) ----------------------------------------------------------------
def test_the_state_keeps_the_latest_report_and_sends_it_only_when_it_changed() -> None:
    s = FleetState(T)
    s.handle(T.availability("cam-1"), b"online")
    before = {n.id: n for n in s.nodes()}
    assert s.handle(T.shadow_report("cam-1"), report("cam-1", extra_classes=MAX_CLASSES)) == "cam-1"
    v = s.node("cam-1").shadow  # type: ignore[union-attr]
    assert v is not None and (v.state, v.request_id, v.frames) == ("running", "shadow-1", MAX_CLASSES + 10)
    assert (v.candidate.name, v.candidate.version, v.live.version) == ("shapes", 4, 3)  # type: ignore[union-attr]
    assert (v.live_boxes, v.candidate_boxes, v.matched) == (20, 30 + MAX_CLASSES, 20)
    assert v.recall == 1.0 and v.precision == pytest.approx(20 / (30 + MAX_CLASSES))
    assert v.mean_iou == pytest.approx(0.95) and v.score_delta == pytest.approx(-0.075)
    assert (v.candidate_latency.p50_ms, v.live_latency.p95_ms) == (26.0, 7.7)  # type: ignore[union-attr]
    # Per class: most boxes first, capped; how many there were is kept.
    assert len(v.classes) == MAX_CLASSES and v.classes_total == MAX_CLASSES + 3
    c = {x.name: x for x in v.classes}
    assert [x.name for x in v.classes[:3]] == ["circle", "square", "triangle"]
    assert (c["square"].precision, c["square"].recall, c["triangle"].precision, c["triangle"].recall) == (1, 1, 0, None)
    line = next(x for x in format_table(s.nodes(), now=s.clock()).splitlines() if x.startswith("cam-1"))
    assert f"running F1 {2 * 20 / (20 + 30 + MAX_CLASSES):.0%} {MAX_CLASSES + 10}fr" in line
    assert any("cam-1 shadow running" in e and "shapes v4" in e for e in changes(before, s.nodes(), now=s.clock()))
    # A delta carries `shadow` to a reader that has not seen this report, not with every later change.
    seen = s.version
    s.handle(T.availability("cam-1"), b"online")
    assert "shadow" in s.delta(0)["nodes"][0]  # type: ignore[index]
    assert "shadow" not in s.delta(seen)["nodes"][0]  # type: ignore[index]
    s.handle(T.shadow_report("cam-1"), report("cam-1", ShadowState.DONE))
    assert s.delta(seen)["nodes"][0]["shadow"]["state"] == "done"  # type: ignore[index]
    s.handle(T.shadow_report("cam-1"), b"")  # the retained report cleared
    assert s.node("cam-1").shadow is None and json.loads(dumps(s.delta(seen)))["nodes"][0]["shadow"] is None  # type: ignore[union-attr]


def _oversized() -> bytes:
    d = json.loads(report("big"))
    d["reason"] = "x" * MAX_REPORT_BYTES
    return json.dumps(d).encode()


@pytest.mark.parametrize("payload, why", [
    (b"\xff not json", "not JSON"),
    (b'{"node": "bad", "state": "exploded"}', "state"),
    (json.dumps({**json.loads(report("bad")), "window_s": float("nan")}).encode(), "non-finite numbers at window_s"),
    (report("other-node"), "names node 'other-node'"),
    (b"[" * 50_000, "recursion limit exceeded"),
    (None, "over the 65536-byte limit"),
], ids=["not-json", "bad-state", "nan", "other-node", "deep", "oversized"])
def test_a_bad_report_is_a_fault_of_its_node_only(payload: bytes | None, why: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    s = FleetState(T)
    s.handle(T.shadow_report("bad"), report("bad"))  # a good one first: its figures stay
    s.handle(T.shadow_report("good"), report("good"))
    with caplog.at_level(logging.WARNING, logger="builder.dashboard.state"):
        s.handle(T.shadow_report("bad"), _oversized() if payload is None else payload)
        s.handle(T.shadow_report("bad"), _oversized() if payload is None else payload)
    bad, good = s.node("bad"), s.node("good")
    assert bad is not None and good is not None
    assert why in bad.faults[LEAF] and bad.rejected == 2 and bad.shadow is not None and bad.shadow.frames == 10
    assert not good.faults and good.shadow is not None
    assert [r.getMessage() for r in caplog.records if why in r.getMessage()] == [f"node bad: {LEAF} rejected: {bad.faults[LEAF]}"]
    page = json.loads(dumps(s.snapshot()))  # the page's JSON still encodes (no NaN leaked in)
    assert by_id(page)["bad"]["faults"][LEAF] == bad.faults[LEAF]
    assert format_table(s.nodes(), now=s.clock()).splitlines()[1].split()[:2] == ["bad", "faulty"]


# ---- a real broker and the dashboard server --------------------------------------------------------------
def publish(broker: LocalBroker, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        for topic, payload in msgs:
            c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def api_nodes(d: Dashboard) -> dict[str, dict[str, Any]]:
    status, body, _ = get(d, "/api/state")
    assert status == 200
    return by_id(json.loads(body))


def test_retained_reports_reach_the_api_and_bad_ones_only_fault_their_node(
        mqtt_broker: LocalBroker, dash: Dashboard) -> None:  # noqa: F811 - the fixture
    stream = SSE(dash.port)
    assert stream.next()["type"] == "snapshot"
    publish(mqtt_broker, [(T.availability("cam-1"), b"online"), (T.shadow_report("cam-1"), report("cam-1")),
                          (T.shadow_report("cam-2"), b'{"node": "cam-2", "state": 7}'),
                          (T.shadow_report("cam-3"), _oversized().replace(b'"big"', b'"cam-3"'))])
    assert wait_until(lambda: {"cam-1", "cam-2", "cam-3"} <= set(api_nodes(dash)), 10)
    nodes = api_nodes(dash)
    sh = nodes["cam-1"]["shadow"]
    assert (sh["state"], sh["frames"], sh["f1"], sh["recall"], sh["candidate"]) == (
        "running", 10, 0.8, 1.0, {"name": "shapes", "version": 4})
    assert sh["candidate_latency"]["p50_ms"] == 26.0 and sh["live_latency"]["p50_ms"] == 5.5
    assert [c["name"] for c in sh["classes"]] == ["circle", "square", "triangle"] and sh["ts"] > time.time() - 60
    assert not nodes["cam-1"]["faults"]
    assert "shadow report rejected" in nodes["cam-2"]["faults"][LEAF] and nodes["cam-2"]["shadow"] is None
    assert "byte limit" in nodes["cam-3"]["faults"][LEAF]
    # The stream goes on: the next report of cam-1 arrives as a delta with its new state.
    publish(mqtt_broker, [(T.shadow_report("cam-1"), report("cam-1", ShadowState.DONE, frames=20))])
    ev = stream.until(lambda e: e["type"] == "delta" and (by_id(e).get("cam-1") or {}).get("shadow", {}).get("state") == "done")
    assert by_id(ev)["cam-1"]["shadow"]["frames"] == 20
    stream.close()
    # Retained: a dashboard connecting now gets the report from the broker.
    late = FleetState(T)
    from builder.dashboard.link import FleetLink

    link = FleetLink(mqtt_broker.url, late).start()
    try:
        assert wait_until(lambda: (n := late.node("cam-1")) is not None and n.shadow is not None
                          and n.shadow.frames == 20, 5)
    finally:
        link.stop()


# ---- the page --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_node_row_shows_the_shadow_cell_and_its_details(
        browser: Any, mqtt_broker: LocalBroker, dash: Dashboard, artifacts_dir: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    publish(mqtt_broker, [(T.availability("cam-1"), b"online"), (T.shadow_report("cam-1"), report("cam-1")),
                          (T.availability("cam-2"), b"online"), (T.shadow_report("cam-2"), b"{oops")])
    drv = browser
    drv.get(f"{dash.url}/?token={TOKEN}")

    def cells() -> dict[str, str]:
        return drv.execute_script("""
            const out = {};
            for (const tr of document.querySelectorAll('#nodes tbody tr[data-node]'))
              out[tr.dataset.node] = tr.querySelector('td.shadow').innerText;
            return out;""")

    assert wait_until(lambda: cells().get("cam-1") == "running 80 % · 10 fr\nshapes v4"
                      and "report error" in cells().get("cam-2", ""), 15), cells()
    assert drv.find_element(By.CSS_SELECTOR, '#nodes thead th[data-col="shadow"]').text == "shadow"
    drv.find_element(By.CSS_SELECTOR, 'tr[data-node="cam-1"] td.shadow').click()
    assert wait_until(lambda: drv.find_elements(By.CSS_SELECTOR, 'tr[data-shadow-of="cam-1"] tr[data-class="triangle"]'), 5)
    text = drv.find_element(By.CSS_SELECTOR, 'tr[data-shadow-of="cam-1"]').text
    assert "precision 67 % · recall 100 % · F1 80 %" in text and "candidate 26.0 / 41.9 ms · live 5.5 / 7.7 ms" in text
    assert "shapes v4 beside live shapes v3" in text and "reported" in text and "null" not in text
    drv.save_screenshot(str(artifacts_dir / "dashboard-shadow.png"))
    errors = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"the page's scripts raised: {errors}"
