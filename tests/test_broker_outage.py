"""Broker link resilience, end to end: a real `AgentService` process on a real TLS + password + ACL Mosquitto.

1. A network cut of several seconds (a loopback TCP relay between agent and broker drops every connection):
   the broker publishes the agent's last will, availability goes "offline", then back "online" on reconnect.
2. The broker itself stopped for several seconds and restarted: the agent process survives, frames keep being
   processed, telemetry produced during the outage is buffered up to its bound (oldest dropped, counted) and
   delivered after the reconnect, and availability is "online" again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from agent.protocol.telemetry import Telemetry
from agent.protocol.topics import Topics

HERE = Path(__file__).parent
ACL = (HERE.parent / "docs" / "mosquitto" / "edge-fleet.acl").read_text()
USERS = {"node-a": "pw-a", "fleet-admin": "pw-admin"}
T = Topics("edgefleet")
AVAIL = T.availability("node-a")

pytestmark = pytest.mark.slow


class Relay:
    """TCP relay on loopback; cut(seconds) drops every connection and refuses new ones for a while."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.down_until = 0.0
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.closed = True
        self.cut(0)
        self.srv.close()


class Watcher:
    """fleet-admin over TLS, straight to the broker; reconnects by itself after a broker restart."""

    def __init__(self, broker: Any) -> None:
        self.msgs: list[tuple[float, str, bytes]] = []
        self.lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv5)
        c.username_pw_set("fleet-admin", USERS["fleet-admin"])
        c.tls_set(ca_certs=str(broker.ca_path))
        c.reconnect_delay_set(1, 1)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("edgefleet/#", qos=1)
        c.on_message = self._on
        c.connect(broker.host, broker.tls_port, keepalive=5)
        c.loop_start()
        self.c = c

    def _on(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((time.time(), m.topic, bytes(m.payload)))

    def on(self, topic: str, since: float = 0.0) -> list[bytes]:
        with self.lock:
            return [p for t, tp, p in self.msgs if tp == topic and t >= since]

    def first(self, topic: str, payload: bytes, since: float) -> float:
        with self.lock:
            return next(t for t, tp, p in self.msgs if tp == topic and p == payload and t >= since)

    def telemetry(self, since: float = 0.0) -> list[Telemetry]:
        return [Telemetry.model_validate_json(p) for p in self.on(T.telemetry("node-a"), since)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_outage_agent_survives_buffers_telemetry_and_availability_follows(
        broker_factory: Any, coral_data: Path, tmp_path: Path) -> None:
    from builder.data.synth import make_video

    broker = broker_factory(users=USERS, acl=ACL, tls=True)
    relay = Relay(broker.tls_port)
    video = tmp_path / "cam.avi"
    make_video(video, n_frames=20, size=(160, 120), fps=20, classes=["a", "b"], seed=5)
    pw = tmp_path / "mqtt-password"
    pw.write_text(USERS["node-a"] + "\n")
    pw.chmod(0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text("\n".join([
        'node_id = "node-a"', f'state_dir = "{tmp_path / "state"}"', f'trusted_keys_dir = "{tmp_path / "keys"}"',
        "[broker]", f'url = "mqtts://127.0.0.1:{relay.port}"', 'username = "node-a"', f'password_file = "{pw}"',
        f'ca_file = "{broker.ca_path}"', "keepalive_s = 5", "reconnect_min_s = 1", "reconnect_max_s = 2",
        "offline_buffer = 4",
        "[camera]", f'source = "{video}"', "loop = true", "realtime = true",
        "[backend]", 'prefer = "cpu"',
        "[telemetry]", "interval_s = 0.5", 'power_source = "estimated"', "",
    ]))
    watcher = Watcher(broker)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    log = (tmp_path / "agent.log").open("w")
    proc = subprocess.Popen([sys.executable, str(HERE / "helpers_telemetry.py"), str(cfg),
                             str(coral_data / "mobilenet_v1_0.25_128_quant.tflite")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_for(lambda: watcher.on(AVAIL)[-1:] == [b"online"], 20), (tmp_path / "agent.log").read_text()
        assert wait_for(lambda: any(t.counters.frames_inferred > 0 for t in watcher.telemetry()), 20)

        # -- 1. the network between agent and broker is cut for 4 s: LWT offline, then online again
        t_cut = time.time()
        relay.cut(4.0)
        assert wait_for(lambda: b"offline" in watcher.on(AVAIL, t_cut), 10), "no LWT"
        assert wait_for(lambda: watcher.on(AVAIL, t_cut)[-1:] == [b"online"], 20), "not back online"
        assert proc.poll() is None

        # -- 2. the broker stops for 5 s and restarts
        before = watcher.telemetry()[-1]
        t_stop = time.time()
        broker.stop()
        relay.cut(8.0)  # keep the agent away a little longer, so the watcher is back first and sees the replay
        time.sleep(5.0)
        assert proc.poll() is None, "the agent process died with the broker"
        t_start = time.time()
        broker.start()
        assert wait_for(watcher.c.is_connected, 15)
        assert wait_for(lambda: watcher.on(AVAIL, t_start)[-1:] == [b"online"], 30), "not online after restart"
        t_back = watcher.first(AVAIL, b"online", t_start)
        # reconnect attempts are capped at reconnect_max_s (2 s): back within ~2 s of the relay reopening (t_stop+8)
        assert t_back - t_stop < 8 + 2 + 3.5, t_back - t_stop
        assert wait_for(lambda: any(t.ts.timestamp() > t_back + 1 for t in watcher.telemetry(t_start)), 15)
        after = watcher.telemetry(t_start)
        during = [t for t in after if t_stop < t.ts.timestamp() < t_back]
        # produced while disconnected (~16 messages), buffered up to the bound: the newest 4 arrive, the
        # oldest were dropped and counted
        assert 1 <= len(during) <= 4, [(t.ts.timestamp() - t_stop) for t in after]
        assert all(t.ts.timestamp() > t_stop + 4 for t in during)
        latest = after[-1]
        assert latest.mqtt.dropped_messages >= 3 and latest.mqtt.reconnects >= 2
        assert latest.mqtt.denied_publishes == 0  # the ACL lets a node publish all of its own topics
        # frames kept being processed during the outage
        frames = [t.counters.frames_inferred for t in during]
        assert frames == sorted(frames) and frames[0] > before.counters.frames_inferred
        assert all(t.rates.inference_fps > 0 for t in during)
        assert isinstance(latest.ts, datetime)
        disc = [p for _, tp, p in watcher.msgs if tp.startswith("homeassistant/")]
        assert disc == []  # fleet-admin reads only edgefleet/#; discovery went to homeassistant/ (allowed)
    finally:
        if proc.poll() is None:
            proc.terminate()
        rc = proc.wait(20)
        log.close()
        relay.close()
        watcher.close()
    assert rc == 0, (tmp_path / "agent.log").read_text()[-3000:]
    text = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "refused publish" not in text
    json.loads(watcher.on(T.state("node-a"))[-1])  # the retained state survived as valid JSON
