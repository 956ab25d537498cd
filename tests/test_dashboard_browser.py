"""End to end in a real browser: broker + two agents + `edge-builder dashboard`, driven through headless Chromium.

The page must first show its login prompt (no token yet), then log in with the token the command printed
(typed into the prompt, as an operator pasting it would); then show both nodes with their model versions; a rollout published from the page must reach both
nodes (each node's update followed to `committed`, both rows at the new version); malformed telemetry from
one node must mark only that node faulty. The screenshot goes to test-artifacts/dashboard.png.

The agents are the real daemon (`edge-agent run`, with the trained test bundle). EDGE_DASHBOARD_E2E=harness
swaps in tests/helpers_updates.NodeHarness processes (the real updater and store without the camera pipeline),
to tell a dashboard fault from a daemon fault when one appears.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers_nodes import node_config

from agent.protocol.topics import Topics
from builder.fleet.devservices import FileServer, LocalBroker, free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1100"]
T = Topics("edgefleet")
NODES = ("node-a", "node-b")

pytestmark = pytest.mark.slow


def real_agent_missing() -> str | None:
    """Why `edge-agent run` cannot be the node here yet (None: it can)."""
    if os.environ.get("EDGE_DASHBOARD_E2E") == "harness":
        return "forced by EDGE_DASHBOARD_E2E=harness"
    return None


# ---- browser -------------------------------------------------------------------------------------------
@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium + chromium-driver are not installed")
    profile = tempfile.mkdtemp(prefix="edge-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in [*CHROME_FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ---- nodes ---------------------------------------------------------------------------------------------
@dataclass
class Fleet:
    mode: str
    bundle_v2: Path
    new_version: int
    old_version: int
    key: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs if p.exists())


def _spawn(cmd: list[str], log: Path, fleet: Fleet, env: dict[str, str] | None = None) -> None:
    with open(log, "wb") as out:
        fleet.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                            env={**os.environ, **(env or {})}))
    fleet.logs.append(log)


def start_real_agents(request: pytest.FixtureRequest, broker: LocalBroker, www: Path, tmp: Path) -> Fleet:
    """Two `edge-agent run` daemons on the trained test bundle; v+1 of it is put where the HTTP server serves."""
    from agent.security.bundle import Bundle, write_manifest
    from agent.security.signing import SigningKey
    from builder.data.synth import make_video

    bundle: Path = request.getfixturevalue("trained_bundle")
    key: Path = request.getfixturevalue("trained_bundle_key")
    trusted: Path = request.getfixturevalue("trained_bundle_keys")
    m = Bundle.load(bundle).manifest
    v2 = www / f"{m.name}-v{m.version + 1}"
    shutil.copytree(bundle, v2)
    write_manifest(v2, m.model_copy(update={"version": m.version + 1}), SigningKey.load(key))
    video = tmp / "camera.avi"
    # The scene and threshold the agent's detection-quality tests use with this bundle (tests/test_engine.py).
    make_video(video, n_frames=40, size=(320, 240), fps=10, classes=list(m.class_names), seed=5, write_json=False)
    fleet = Fleet("real edge-agent", v2, m.version + 1, m.version, key)
    for node in NODES:
        cfg = node_config(node, tmp, broker.url, bundle, trusted, video, trial_frames=20, trial_seconds=10)
        _spawn([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], tmp / f"{node}.log", fleet)
    return fleet


def start_harness_agents(broker: LocalBroker, www: Path, tmp: Path) -> Fleet:
    """INTERIM nodes: tests/helpers_updates.py agents (real updater + TFLite on Coral MobileNet) as processes."""
    sys.path.insert(0, str(ROOT / "tests"))
    import helpers_updates as hu

    if not hu.MOBILENET.exists():
        pytest.skip(f"Coral test data not found at {hu.CORAL}")
    from agent.security.signing import SigningKey

    keys = tmp / "keys"
    keys.mkdir()
    sk = SigningKey.generate()
    sk.save(keys / "fleet.key")
    trusted = tmp / "trusted"
    trusted.mkdir()
    shutil.copy(keys / "fleet.pub", trusted / "fleet.pub")
    v1 = hu.make_bundle(tmp / "mobilenet-v1", sk, 1)
    v2 = hu.make_bundle(www / "mobilenet-v2", sk, 2)
    video = hu.write_video(tmp / "camera.avi")
    fleet = Fleet("interim harness", v2, 2, 1, keys / "fleet.key")
    for node in NODES:
        cfg = tmp / f"{node}.json"
        cfg.write_text(json.dumps({"state_dir": str(tmp / node), "keys_dir": str(trusted), "host": broker.host,
                                   "port": broker.port, "video": str(video), "initial_bundle": str(v1),
                                   "node": node}))
        # helpers_updates.agent_main names every node node-1; run a tiny wrapper that sets the id.
        code = ("import json,sys,time; sys.path.insert(0,'tests'); import helpers_updates as hu; "
                "from pathlib import Path; c=json.load(open(sys.argv[1])); "
                "h=hu.NodeHarness(state_dir=Path(c['state_dir']), keys_dir=Path(c['keys_dir']), "
                "broker_host=c['host'], broker_port=c['port'], video=Path(c['video']), "
                "initial_bundle=Path(c['initial_bundle']), node=c['node']); h.start(); "
                # The harness has no availability topic; announce it from the node's own connection.
                "h.client.publish(h.topics.availability(h.node), 'online', qos=1, retain=True); "
                "h.publish_state(); time.sleep(1e9)")
        _spawn([sys.executable, "-c", code, str(cfg)], tmp / f"{node}.log", fleet)
    return fleet


@pytest.fixture
def fleet(request: pytest.FixtureRequest, mqtt_broker: LocalBroker, http_server: FileServer,
          tmp_path: Path) -> Iterator[Fleet]:
    reason = real_agent_missing()
    f = (start_harness_agents(mqtt_broker, http_server.root, tmp_path) if reason
         else start_real_agents(request, mqtt_broker, http_server.root, tmp_path))
    print(f"nodes: {f.mode}" + (f" ({reason})" if reason else ""))
    yield f
    f.stop()


# ---- dashboard -----------------------------------------------------------------------------------------
def dashboard_cmd() -> list[str]:
    """`edge-builder dashboard`, run with this interpreter."""
    return [sys.executable, "-m", "builder.cli", "dashboard"]


@dataclass
class DashboardProc:
    url: str
    token: str  # from the login URL the command printed at start (Jupyter's way)
    audit_log: Path


def _login_url(log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("open to log in: "):
                return line.split()[-1]
        time.sleep(0.1)
    raise AssertionError(f"the dashboard printed no login URL:\n{log.read_text()}")


@pytest.fixture
def dashboard(fleet: Fleet, mqtt_broker: LocalBroker, http_server: FileServer,
              tmp_path: Path) -> Iterator[DashboardProc]:
    port = free_port()
    log = tmp_path / "dashboard.log"
    env = {k: v for k, v in os.environ.items() if k != "EDGE_DASHBOARD_TOKEN"}  # let it generate one
    with open(log, "wb") as out:
        proc = subprocess.Popen([*dashboard_cmd(), "--broker", mqtt_broker.url, "--port", str(port),
                                 "--bundles", str(http_server.root), "--http-base", http_server.base_url,
                                 "--key", str(fleet.key), "--audit-log", str(tmp_path / "audit.jsonl")],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    fleet.logs.append(log)
    try:
        wait_port(port, 20)
        url = _login_url(log, 10)
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        yield DashboardProc(f"http://127.0.0.1:{port}", url.split("=", 1)[1], tmp_path / "audit.jsonl")
    finally:
        proc.terminate()
        proc.wait(10)


# ---- the test ------------------------------------------------------------------------------------------
def _rows(drv: Any) -> dict[str, dict[str, str]]:
    return drv.execute_script("""
        const out = {};
        for (const tr of document.querySelectorAll('#nodes tbody tr[data-node]'))
          out[tr.dataset.node] = {status: tr.dataset.status, version: tr.dataset.modelVersion,
                                  model: tr.querySelector('td.model').textContent};
        return out;""")


def _wait(drv: Any, pred: Any, timeout: float, what: str, fleet: Fleet) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; page rows: {_rows(drv)}\n{fleet.tail()}")


def _log_in(drv: Any, dashboard: DashboardProc, fleet: Fleet) -> None:
    """Without a token the page shows only its login prompt; the token typed there logs in (cookie)."""
    from selenium.webdriver.common.by import By

    drv.get(dashboard.url + "/")
    prompt = drv.find_element(By.ID, "login")
    _wait(drv, lambda: prompt.is_displayed(), 10, "the login prompt", fleet)
    assert not drv.find_element(By.ID, "main").is_displayed()
    assert drv.find_element(By.ID, "link").text == "logged out"
    drv.find_element(By.ID, "login-token").send_keys(dashboard.token)
    drv.find_element(By.ID, "login-submit").click()
    _wait(drv, lambda: drv.current_url == dashboard.url + "/" and drv.find_element(By.ID, "main").is_displayed(),
          10, "the page after login", fleet)
    assert not drv.find_element(By.ID, "login").is_displayed()
    assert all(c["httpOnly"] and c["sameSite"] == "Strict" for c in drv.get_cookies())  # not readable by scripts


def test_dashboard_in_chromium_shows_nodes_and_rolls_out_to_both(
        browser: Any, fleet: Fleet, dashboard: DashboardProc, mqtt_broker: LocalBroker, artifacts_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from builder.dashboard.audit import read

    drv = browser
    try:
        _log_in(drv, dashboard, fleet)
        old, new = str(fleet.old_version), str(fleet.new_version)
        _wait(drv, lambda: all(_rows(drv).get(n, {}).get("version") == old for n in NODES), 90,
              f"both nodes at v{old}", fleet)
        assert drv.find_element(By.ID, "link").text == "live"
        if fleet.mode.startswith("real"):  # each agent's camera (from its telemetry) is a sub-row under its node
            _wait(drv, lambda: all(drv.execute_script(
                "const r = document.querySelector(`tr[data-camera-of='${arguments[0]}']`);"
                "return r && r.dataset.cameraState", n) for n in NODES), 30, "a camera row under each node", fleet)

        # One-shot publish from the page (under its <details>): pick the new bundle, target all, publish.
        drv.execute_script("document.getElementById('oneshot').open = true")
        select = Select(drv.find_element(By.ID, "bundle"))
        _wait(drv, lambda: any(f"v{new}" in o.text for o in select.options), 10, "the bundle list", fleet)
        select.select_by_visible_text(next(o.text for o in select.options if f"v{new}" in o.text))
        Select(drv.find_element(By.ID, "target-kind")).select_by_value("all")
        drv.find_element(By.ID, "publish").click()
        _wait(drv, lambda: "published" in drv.find_element(By.ID, "rollout-msg").text, 20, "the publish reply", fleet)
        published = [e for e in read(dashboard.audit_log) if e["action"] == "publish"]
        assert [(e["outcome"], e["target"], e["version"]) for e in published] == [("ok", "all", fleet.new_version)]

        def states() -> dict[str, str]:
            return drv.execute_script("""
                const out = {};
                for (const el of document.querySelectorAll('[data-rollout-node]'))
                  out[el.dataset.rolloutNode] = el.dataset.state;
                return out;""")

        _wait(drv, lambda: all(states().get(n) == "committed" for n in NODES), 150, "both nodes committed", fleet)
        _wait(drv, lambda: all(_rows(drv)[n]["version"] == new for n in NODES), 30, f"both rows at v{new}", fleet)
        assert all(f"v{new}" in _rows(drv)[n]["model"] for n in NODES)

        # Malformed telemetry from node-b: node-b is shown faulty, node-a is not, and the page keeps going.
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect(mqtt_broker.host, mqtt_broker.port)
        c.loop_start()
        c.publish(T.telemetry("node-b"), b'{"node": "node-b", "interval_s": "often"}', qos=1).wait_for_publish(5)
        c.disconnect()
        c.loop_stop()
        _wait(drv, lambda: _rows(drv)["node-b"]["status"] == "faulty", 10, "node-b faulty", fleet)
        assert _rows(drv)["node-a"]["status"] != "faulty"
        events = drv.execute_script("return window.dashboard.eventCount")
        time.sleep(1.5)
        if fleet.mode.startswith("real"):  # real agents keep sending telemetry: the page keeps updating
            assert drv.execute_script("return window.dashboard.eventCount") > events
        assert "interval_s" in drv.find_element(By.CSS_SELECTOR, 'tr[data-node="node-b"] .fault').text
        errors = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"the page logged errors: {errors}"
        drv.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.3)
    finally:
        drv.save_screenshot(str(artifacts_dir / "dashboard.png"))
