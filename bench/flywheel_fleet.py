"""The live parts of the flywheel benchmark: a real Mosquitto, an HTTP file server, the collector as an
`edge-builder collect` process, one `edge-agent run` daemon, and a watcher of the node's retained topics.

Used by bench/bench_flywheel.py; every step a user would type runs as the same command here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.fleet.devservices import FileServer, LocalBroker, free_port, wait_port  # noqa: E402

NODE = "cam-1"
PREFIX = "edgefleet"
TOKEN = "flywheel-bench-operator-token-0123456789"  # the review page's login (>= the dashboard's minimum)


def cli(*args: object, timeout: float = 3600, log: Path | None = None) -> str:
    """Run `edge-builder ARGS` (as a user types it) and return its stdout; raise with its output on failure."""
    cmd = [sys.executable, "-m", "builder.cli", *map(str, args)]
    print("$ edge-builder " + " ".join(map(str, args)), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if log is not None:
        log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"edge-builder {args[0]} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return r.stdout


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.5) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(step)
    raise TimeoutError(f"no {what} after {timeout:.0f} s")


class Watcher:
    """Keeps the latest payload of every topic under the node (retained ones arrive at subscribe)."""

    def __init__(self, broker: LocalBroker) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.latest: dict[str, bytes] = {}
        self.history: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flywheel-watch", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/node/{NODE}/#", qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.latest[msg.topic] = msg.payload
            self.history.setdefault(msg.topic, []).append(msg.payload)

    def json(self, sub: str) -> dict[str, Any] | None:
        with self._lock:
            raw = self.latest.get(f"{PREFIX}/node/{NODE}/{sub}")
        return json.loads(raw) if raw else None

    def all_json(self, sub: str) -> list[dict[str, Any]]:
        with self._lock:
            raws = list(self.history.get(f"{PREFIX}/node/{NODE}/{sub}", []))
        return [json.loads(r) for r in raws if r]

    def publish(self, topic: str, payload: dict[str, Any], retain: bool = True) -> None:
        self.client.publish(topic, json.dumps(payload), qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def node_toml(work: Path, broker: LocalBroker, bundle: Path, trusted: Path, video: Path, collector_url: str,
              score_threshold: float, band: tuple[float, float]) -> Path:
    """The node's config: CPU backend, the video as its camera, capture on (generous rate: a bench, not a Pi)."""
    cfg = work / f"{NODE}.toml"
    cfg.write_text(textwrap.dedent(f"""\
        node_id = "{NODE}"
        groups = ["lab"]
        state_dir = "{work / 'node-state'}"
        trusted_keys_dir = "{trusted}"
        bundle = "{bundle}"
        [broker]
        url = "{broker.url}"
        [camera]
        source = "{video}"
        [backend]
        prefer = "cpu"
        [detect]
        score_threshold = {score_threshold}
        [telemetry]
        interval_s = 2.0
        hass_discovery = false
        [updates]
        trial_frames = 30
        trial_seconds = 5
        clock_sync = "off"
        [capture]
        enabled = true
        band = [{band[0]}, {band[1]}]
        rate_per_min = 6000.0
        burst = 50
        max_frames = 2000
        max_bytes = 400000000
        collector_url = "{collector_url}"
        credential_file = "{work / 'collector.token'}"
        """))
    return cfg


class Fleet:
    """Broker + file server + collector + one node daemon, all real processes; `close()` stops them all."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.broker = LocalBroker(work / "broker").start()
        self.files = FileServer(work / "www").start()
        self.collected = work / "collected"
        self.collector: subprocess.Popen[bytes] | None = None
        self.collector_url = ""
        self.node: subprocess.Popen[bytes] | None = None
        self.watch = Watcher(self.broker)

    def start_collector(self, review: Path | None = None) -> str:
        """`edge-builder collect` on a free loopback port (again with --review once there is a harvest)."""
        self.stop_collector()
        port = free_port()
        args = ["collect", "--dir", self.collected, "--listen", f"127.0.0.1:{port}", "--token", TOKEN]
        args += ["--review", review] if review else []
        log = open(self.work / f"collector-{port}.log", "wb")  # noqa: SIM115 - the process owns it
        self.collector = subprocess.Popen([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=ROOT,
                                          stdout=log, stderr=subprocess.STDOUT)
        wait_port(port, 30)
        self.collector_url = f"http://127.0.0.1:{port}"
        return self.collector_url

    def stop_collector(self) -> None:
        if self.collector is not None:
            self.collector.terminate()
            self.collector.wait(15)
            self.collector = None

    def start_node(self, cfg: Path) -> None:
        log = open(self.work / "agent.log", "wb")  # noqa: SIM115 - the process owns it
        self.node = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], cwd=ROOT,
                                     stdout=log, stderr=subprocess.STDOUT)

    def node_alive(self) -> bool:
        return self.node is not None and self.node.poll() is None

    def agent_log_tail(self, n: int = 3000) -> str:
        p = self.work / "agent.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def close(self) -> None:
        if self.node is not None:
            self.node.terminate()
            try:
                self.node.wait(20)
            except subprocess.TimeoutExpired:
                self.node.kill()
        self.stop_collector()
        self.watch.close()
        self.files.stop()
        self.broker.stop()
