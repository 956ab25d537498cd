"""The dashboard's HTTP server (stdlib): the static page, a JSON API, and Server-Sent Events.

    GET  /                    the page (static/index.html, app.js, style.css: our own code, no libraries)
    GET  /api/events          SSE: one `snapshot` event, then `delta` events with only what changed
    GET  /api/state           the snapshot as plain JSON (scripts, the terminal twin, tests)
    GET  /api/bundles         bundles found under --bundles
    POST /api/rollout         {"bundle": id, "target": "all" | "group:G" | "node:N"} -> publish
    GET  /api/snapshot/NODE   the node's last JPEG snapshot, if it publishes them

Each SSE connection is one thread that sleeps on the state's condition variable, so an idle fleet costs
nothing; changes are coalesced for `batch_s` so a 50-node fleet at 1 Hz makes a few small events per second.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.protocol.manifest import Target
from builder.dashboard.bundles import BundleInfo, find_bundles
from builder.dashboard.link import FleetLink
from builder.dashboard.rollout import PublishConfig, RolloutError, publish
from builder.dashboard.state import FleetState, dumps

STATIC = Path(__file__).with_name("static")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
KEEPALIVE_S = 15.0


class Dashboard:
    """State + MQTT link + HTTP server, started and stopped together."""

    def __init__(self, state: FleetState, link: FleetLink | None, bundle_roots: list[Path],
                 publish_cfg: PublishConfig, host: str = "127.0.0.1", port: int = 0, batch_s: float = 0.2) -> None:
        self.state = state
        self.link = link
        self.bundle_roots = [Path(p) for p in bundle_roots]
        self.publish_cfg = publish_cfg
        self.batch_s = batch_s
        self.stopping = threading.Event()
        self._bundles: dict[str, BundleInfo] = {}
        self._publish_lock = threading.Lock()
        self.httpd = _Server((host, port), _Handler)
        self.httpd.dashboard = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.httpd.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> Dashboard:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="dashboard-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.link is not None:
            self.link.stop()

    def bundles(self) -> list[BundleInfo]:
        found = find_bundles(self.bundle_roots)
        self._bundles = {b.id: b for b in found}
        return found

    def rollout(self, bundle_id: str, target_text: str) -> dict[str, Any]:
        if self.link is None:
            raise RolloutError("not connected to a broker")
        try:
            target = Target.parse(target_text.strip())
            self.publish_cfg.topics.announce(target)  # validates the group/node name as a topic segment
        except ValueError as exc:
            raise RolloutError(str(exc).splitlines()[-1]) from None
        if bundle_id not in self._bundles:
            self.bundles()
        info = self._bundles.get(bundle_id)
        if info is None:
            raise RolloutError(f"unknown bundle id {bundle_id!r}; reload the bundle list")
        with self._publish_lock:  # one publish at a time: two clicks must not interleave announcements
            topic = publish(info, target, self.publish_cfg)
            assert info.name is not None and info.version is not None
            r = self.state.add_rollout(info.rel, info.name, info.version, target)
        return {"ok": True, "topic": topic, "rollout": r.model_dump()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    dashboard: Dashboard


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the page polls nothing, but a browser's requests would flood the terminal

    @property
    def dash(self) -> Dashboard:
        return self.server.dashboard

    # ---- helpers -------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=60" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"ok": False, "error": message}, status)

    # ---- routes --------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path in ("/", "/index.html"):
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path == "/api/events":
            return self._events()
        if path == "/api/state":
            return self._json(self.dash.state.snapshot())
        if path == "/api/bundles":
            return self._json({"bundles": [b.model_dump() for b in self.dash.bundles()],
                               "roots": [str(r) for r in self.dash.bundle_roots],
                               "http_base": self.dash.publish_cfg.http_base,
                               "problem": self.dash.publish_cfg.problem()})
        if path.startswith("/api/snapshot/"):
            jpeg = self.dash.state.snapshot_jpeg(path[len("/api/snapshot/"):])
            if jpeg is None:
                return self._error(404, "no snapshot from that node")
            return self._send(200, jpeg, "image/jpeg")
        if path == "/healthz":
            connected = self.dash.link is not None and self.dash.link.connected.is_set()
            return self._json({"ok": True, "broker": connected}, 200 if connected else 503)
        self._error(404, f"no such page: {path}")

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        if path != "/api/rollout":
            return self._error(404, f"no such endpoint: {path}")
        # Cross-site forms cannot send application/json without a CORS preflight, which we never grant;
        # a browser's Origin must also be this very server.
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return self._error(415, "send application/json")
        origin = self.headers.get("Origin")
        if origin and urlparse(origin).netloc != self.headers.get("Host"):
            return self._error(403, "cross-origin rollout refused")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
            bundle_id, target = str(body["bundle"]), str(body.get("target", "all"))
        except (ValueError, KeyError, TypeError):
            return self._error(400, 'body must be {"bundle": ID, "target": "all|group:G|node:N"}')
        try:
            self._json(self.dash.rollout(bundle_id, target))
        except RolloutError as exc:
            self._error(400, str(exc))

    def _static(self, name: str) -> None:
        # Only files that exist directly in static/: no subdirectories, no "..".
        if "/" in name or name.startswith(".") or not (STATIC / name).is_file():
            return self._error(404, f"no such file: {name}")
        ctype = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
        self._send(200, (STATIC / name).read_bytes(), ctype)

    def _events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "keep-alive")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        state, stopping = self.dash.state, self.dash.stopping
        snap = state.snapshot()
        version = int(snap["v"])
        try:
            self._event(snap)
            idle = 0.0
            while not stopping.is_set():
                if state.wait(version, 1.0):
                    stopping.wait(self.dash.batch_s)  # coalesce a burst into one event
                    delta = state.delta(version)
                    if delta is not None:
                        self._event(delta)
                        version = int(delta["v"])
                    idle = 0.0
                else:
                    idle += 1.0
                    if idle >= KEEPALIVE_S:  # proxies and browsers drop silent streams
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        idle = 0.0
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        self.close_connection = True

    def _event(self, obj: dict[str, Any]) -> None:
        self.wfile.write(f"event: {obj['type']}\ndata: {dumps(obj)}\n\n".encode())
        self.wfile.flush()


def wait_until(pred: Any, timeout: float, step: float = 0.05) -> bool:
    """Poll `pred()` until true or `timeout` (used by the CLI's startup checks and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
