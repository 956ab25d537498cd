"""The node table's rendering path (static/nodes.js) in headless Chromium, at a small scale: 60 simulated nodes
(builder.dashboard.loadgen over a real Mosquitto), `edge-builder dashboard`, the page logged in.

Every node has its <tr data-node> with data-status and data-model-version; the rows in view get every cell and
their charts, and the page records staleness for them; a row scrolled into view is drawn; an announcement the
simulated nodes install moves every row to the new version, the rows out of view included (their slow cells and
attributes stay current). The 1,000-node figures are bench/bench_dashboard.py's, not this test's.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_dashboard_browser import _rows, browser  # noqa: F401 - the Chromium fixture
from test_loadgen import announcement

from agent.protocol.manifest import Target
from agent.protocol.topics import Topics
from agent.security.keys import SigningKey
from builder.dashboard.loadgen import SimFleet, sim_bundle
from builder.fleet.devservices import LocalBroker, free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
T = Topics("edgefleet")
N = 60

pytestmark = pytest.mark.slow


@pytest.fixture
def page(mqtt_broker: LocalBroker, tmp_path: Path) -> Iterator[tuple[str, SimFleet]]:
    token = secrets.token_urlsafe(24)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "dashboard", "--broker", mqtt_broker.url,
                             "--port", str(port), "--audit-log", str(tmp_path / "audit.jsonl")], cwd=ROOT,
                            env={**os.environ, "EDGE_DASHBOARD_TOKEN": token},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fleet = SimFleet(mqtt_broker.url, N, T, interval_s=1.0, detections=False, update_delay_s=0.3).start()
    try:
        wait_port(port, 20)
        yield f"http://127.0.0.1:{port}/?token={token}", fleet
    finally:
        fleet.stop()
        proc.terminate()
        proc.wait(10)


def _until(pred: Any, timeout: float, what: str, drv: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; rows: {_rows(drv)}")


def test_node_table_patches_rows_in_view_and_keeps_every_row_current(
        browser: Any, page: tuple[str, SimFleet], tmp_path: Path) -> None:  # noqa: F811 - the fixture
    url, fleet = page
    drv = browser
    drv.get(url)
    ids = [n.node_id for n in fleet.nodes]
    _until(lambda: set(_rows(drv)) == set(ids) and all(r["status"] == "running" and r["version"] == "1"
                                                         for r in _rows(drv).values()), 20, "every row", drv)
    rows = _rows(drv)
    assert list(rows) == sorted(ids) and all(r["model"] == "shapes v1" for r in rows.values())
    # The first rows are in view: every cell drawn, staleness recorded; the last ones are not drawn yet.
    _until(lambda: rows_with_fps(drv)[:3] == ids[:3], 10, "the rows in view drawn", drv)
    assert ids[-1] not in rows_with_fps(drv)
    assert drv.execute_script("return window.nodeTable.shownLags.length") > 0
    # Scrolled to the bottom, the last row is drawn within a frame or two of coming into view.
    drv.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    _until(lambda: ids[-1] in rows_with_fps(drv), 5, "the last row drawn after scrolling", drv)
    assert drv.execute_script("return window.nodeTable.catchUps.length") > 0
    drv.execute_script("window.scrollTo(0, 0)")
    # Every node installs v2 (a signed announcement on announce/all): every row says so, out of view too.
    key = SigningKey.generate()
    ann = announcement(sim_bundle(tmp_path / "v2", "shapes", 2, key), key, Target())
    fleet.nodes[0].client.publish(T.announce(Target()), ann, qos=1, retain=True)
    _until(lambda: all(r["version"] == "2" and r["model"] == "shapes v2" for r in _rows(drv).values()), 20,
           "every row at v2", drv)
    assert drv.execute_script("return window.nodeTable.selected()") == []
    # Script errors only: a failed resource load elsewhere on the page is test_dashboard_browser's to catch.
    errors = [e["message"] for e in drv.get_log("browser")
              if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert not errors, f"the page's scripts raised: {errors}"


def rows_with_fps(drv: Any) -> list[str]:
    """Ids of the rows whose FPS cell is drawn (fast cells are drawn only in view), in table order."""
    return drv.execute_script("""
        return [...document.querySelectorAll('#nodes tbody tr[data-node]')]
          .filter(tr => !['', '–'].includes(tr.querySelectorAll('td.num')[0].textContent))
          .map(tr => tr.dataset.node);""")
