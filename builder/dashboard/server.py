"""The dashboard's HTTP server (stdlib): the static page, a JSON API, and Server-Sent Events.

    GET  /                    the page (static/index.html, app.js, style.css: our own code, no libraries);
                              /?token=T logs in: sets the session cookie and redirects to /
    GET  /api/session         {"logged_in": bool} (no token needed: the page shows its login prompt on false)
    GET  /api/events          SSE: one `snapshot` event, then `delta` events with only what changed
    /api/...                  the JSON API: one table in builder.dashboard.routes (state, bundles, publish,
                              staged rollouts, fleet commands)

Access (builder.dashboard.auth): every request's Host must be on the allow-list; every /api/ route needs
the token (Bearer or the login cookie); a POST also needs an allowed Origin. The page and its static files
load without a token. Logins and POSTs, refused ones included, go to the audit log.

Each SSE connection is one thread that sleeps on the state's condition variable, so an idle fleet costs
nothing; changes are coalesced for `batch_s` so a 50-node fleet at 1 Hz makes a few small events per second.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from builder.dashboard.audit import AuditLog
from builder.dashboard.auth import AccessError, AccessPolicy
from builder.dashboard.link import FleetLink
from builder.dashboard.rollout import PublishConfig
from builder.dashboard.rollouts import StagedRollouts
from builder.dashboard.routes import FleetApi, Reply, Route, find
from builder.dashboard.state import FleetState, dumps

STATIC = Path(__file__).with_name("static")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
KEEPALIVE_S = 15.0
# Our own scripts only (an injected <script> or inline handler does not run); snapshots are blob:/data: images.
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
MAX_BODY = 65536
IDLE_TIMEOUT_S = 60.0  # a connection that sends nothing (slowloris, a stuck TLS handshake) is dropped


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Server-side TLS (1.2+) from a PEM certificate chain and key (ssl.SSLError/OSError when unusable)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Mounted(Protocol):
    """Pages of a higher layer served by the dashboard (the flywheel's review tab): each answers the
    requests it owns (True) with its own access checks, and leaves the rest to the dashboard. `tab`:
    (label, path) of the page the header links to, for a logged-in browser (/api/session)."""

    tab: tuple[str, str] | None

    def get(self, h: BaseHTTPRequestHandler) -> bool: ...

    def post(self, h: BaseHTTPRequestHandler) -> bool: ...


class Dashboard(FleetApi):
    """State + MQTT links + staged-rollout runner + HTTP server, started and stopped together."""

    def __init__(self, state: FleetState, link: FleetLink | None, bundle_roots: list[Path],
                 publish_cfg: PublishConfig, host: str = "127.0.0.1", port: int = 0, batch_s: float = 0.2,
                 access: AccessPolicy | None = None, audit: AuditLog | None = None,
                 tls: ssl.SSLContext | None = None, rollouts: StagedRollouts | None = None,
                 mounted: Sequence[Mounted] = ()) -> None:
        super().__init__(state, link, bundle_roots, publish_cfg, audit, rollouts)
        self.mounted = list(mounted)
        self.batch_s = batch_s
        self.stopping = threading.Event()
        self.httpd = _Server((host, port), _Handler)
        self.httpd.dashboard = self
        self.tls = tls
        if tls is not None:
            # The handshake happens on the first read, in the connection's own thread, not in accept().
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.access = access or AccessPolicy()
        self.access.tls = tls is not None
        self.access.listening(host, self.port)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.httpd.server_address[0])
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # an URL this machine can open (allowed Host)
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def login_url(self) -> str:
        return self.access.login_url(self.url)

    def start(self) -> Dashboard:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="dashboard-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None and self._thread.is_alive():  # shutdown() waits forever on an unserved server
            self.httpd.shutdown()
        self.httpd.server_close()
        if self.rollouts is not None:  # the runner releases its claim; the record stays for the next start
            self.rollouts.stop()
        if self.link is not None:
            self.link.stop()
        if self.audit is not None:
            self.audit.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    dashboard: Dashboard


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the page polls nothing, but a browser's requests would flood the terminal

    @property
    def dash(self) -> Dashboard:
        return self.server.dashboard

    # ---- helpers -------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=60" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")  # no clickjacking of the Publish button
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")  # never leak a ?token= URL
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"ok": False, "error": message}, status)

    @property
    def remote(self) -> str:
        return str(self.client_address[0])

    def _access(self, mutating: bool, action: str | None = None) -> str | None:
        """The caller's identity for the audit log if allowed; else send 401/403 and return None."""
        try:
            self.dash.access.check_host(self.headers.get("Host"))
            if mutating:  # checked before the token: a cross-site page must not even probe it
                self.dash.access.check_origin(self.headers.get("Origin"))
            self.dash.access.check_token(self.headers.get("Authorization"), self.headers.get("Cookie"))
        except AccessError as exc:
            if mutating:
                self.dash.record("anonymous", self.remote, action or urlparse(self.path).path,
                                 f"denied {exc.status}: {exc}")
            extra = {"WWW-Authenticate": 'Bearer realm="edge-dashboard"'} if exc.status == 401 else None
            self._send(exc.status, dumps({"ok": False, "error": str(exc)}).encode(), "application/json",
                       headers=extra)
            return None
        return self.dash.access.token_id

    # ---- routes --------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if any(m.get(self) for m in self.dash.mounted):
            return None
        url = urlparse(self.path)
        path = url.path
        if path == "/api/session":
            return self._session()
        if path.startswith("/api/"):
            if self._access(mutating=False) is not None:
                self._api_get(path, find("GET", path))
            return None
        try:
            self.dash.access.check_host(self.headers.get("Host"))
        except AccessError as exc:
            return self._error(exc.status, str(exc))
        if path in ("/", "/index.html"):
            token = parse_qs(url.query).get("token")
            return self._login(token[0]) if token else self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path == "/healthz":
            connected = self.dash.link is not None and self.dash.link.connected.is_set()
            return self._json({"ok": True, "broker": connected}, 200 if connected else 503)
        self._error(404, f"no such page: {path}")

    def _login(self, token: str) -> None:
        """`/?token=T`: a good token sets the session cookie and redirects to / (the token leaves the URL bar)."""
        if not self.dash.access.valid(token):
            self.dash.record("anonymous", self.remote, "login", "denied 401: bad token")
            body = (STATIC / "index.html").read_bytes()
            return self._send(401, body, CONTENT_TYPES[".html"])
        self.dash.record(self.dash.access.token_id, self.remote, "login", "ok")
        self._send(303, b"", "text/plain", headers={"Location": "/", "Set-Cookie": self.dash.access.set_cookie()})

    def _session(self) -> None:
        """Whether this browser is logged in: 200 either way (a logged-out page is normal, not an error)."""
        access = self.dash.access
        try:
            access.check_host(self.headers.get("Host"))
        except AccessError as exc:
            return self._error(exc.status, str(exc))
        try:
            access.check_token(self.headers.get("Authorization"), self.headers.get("Cookie"))
        except AccessError:
            return self._json({"ok": True, "logged_in": False})
        tabs = [list(m.tab) for m in self.dash.mounted if m.tab is not None]
        self._json({"ok": True, "logged_in": True, "who": access.token_id, "tabs": tabs})

    def _api_get(self, path: str, route: Route | None) -> None:
        if route is None:
            return self._error(404, f"no such endpoint: {path}")
        if route.handler is None:  # the event stream
            return self._events()
        self._reply(route.handler(self.dash, path))

    def _reply(self, r: Reply) -> None:
        if r.raw is not None:
            return self._send(r.status, r.raw, r.ctype)
        self._json(r.body, r.status)

    def do_POST(self) -> None:
        if any(m.post(self) for m in self.dash.mounted):
            return None
        path = urlparse(self.path).path
        self.close_connection = True  # a refused request's body is never read: do not parse it as the next one
        route = find("POST", path)
        action = route.action if route is not None and route.action else path
        who = self._access(mutating=True, action=action)
        if who is None:
            return None
        if route is None or route.handler is None:
            return self._error(404, f"no such endpoint: {path}")
        # Cross-site forms cannot send application/json without a CORS preflight, which we never grant.
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self.dash.record(who, self.remote, action, "error 415: not application/json")
            return self._error(415, "send application/json")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(min(length, MAX_BODY)) or b"{}")
            if not isinstance(body, dict):
                raise TypeError
        except (ValueError, TypeError):
            self.dash.record(who, self.remote, action, "error 400: malformed body")
            return self._error(400, "the body must be a JSON object")
        r = route.handler(self.dash, body)
        outcome = "ok" if r.status < 400 else f"error {r.status}: {r.error}"
        self.dash.record(who, self.remote, action, outcome, r.target, **r.detail)  # fsynced before the reply
        self._reply(r)

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
