"""`edge-builder collect`: the HTTP(S) server nodes push their captured frames to (and, for now, the review page).

    PUT /api/v1/frames/{id}   a node's upload (agent.capture.uploader: the wire format, docs/PROTOCOL.md)
                              Authorization: Bearer <node token>, X-Edge-Node, X-Edge-Meta-Length, X-Edge-Sha256
                              201 stored · 200 already stored · 400 bad/truncated · 401 bad credential ·
                              403 metadata of another node · 409 same id, other bytes · 411/413 length
    GET /healthz              {"ok": true}
    the review routes         builder.flywheel.review_http, when started with a dataset (--review)

Nothing is written before the whole body arrived and checked out (builder.flywheel.inbox). The credential
is checked before the body is read, so an unknown client cannot make the server buffer anything.
"""

from __future__ import annotations

import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.capture.meta import FRAME_ID
from agent.capture.uploader import UPLOAD_PATH
from agent.protocol.topics import check_segment
from builder.dashboard.auth import AccessPolicy
from builder.flywheel import inbox
from builder.flywheel.credentials import NodeCredentials
from builder.flywheel.http_util import base_url, secure, send_error, send_json
from builder.flywheel.review_http import ReviewRoutes

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024 * 1024
MAX_META = 1024 * 1024
IDLE_TIMEOUT_S = 30.0


class Collector:
    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, review_dataset: Path | None = None,
                 access: AccessPolicy | None = None, tls: ssl.SSLContext | None = None,
                 max_body: int = MAX_BODY) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.credentials = NodeCredentials(self.root)
        self.max_body = max_body
        # The handler reaches this collector through a class attribute of its own subclass.
        self.httpd = ThreadingHTTPServer((host, port), type("CollectorHandler", (_Handler,), {"c": self}))
        self.httpd.daemon_threads = True
        self.tls = tls
        self.port = int(self.httpd.server_address[1])
        self.access = secure(self.httpd, tls, access or AccessPolicy(), host)
        self.review = ReviewRoutes(review_dataset, self.access) if review_dataset is not None else None
        self.counters = {"stored": 0, "duplicate": 0, "refused": 0}
        self.store_lock = threading.Lock()  # one store at a time: two retries of one frame must not race
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return base_url(self.httpd.server_address, self.tls is not None)

    def start(self) -> Collector:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="collector-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():  # shutdown() of an unserved server never returns
            self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, what: str) -> None:
        with self.store_lock:
            self.counters[what] += 1


class _Handler(BaseHTTPRequestHandler):
    c: Collector  # set by Collector on its subclass
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        if urlparse(self.path).path == "/healthz":
            return send_json(self, {"ok": True})
        if self.c.review is None or not self.c.review.get(self):
            send_error(self, 404, "no such page")

    def do_POST(self) -> None:
        if self.c.review is None or not self.c.review.post(self):
            self.close_connection = True
            send_error(self, 404, "no such endpoint")

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True  # the body (if any) is not read: never parse it as the next request
        self.c.count("refused")
        send_error(self, status, message)

    def _authorized_node(self) -> str | None:
        node = self.headers.get("X-Edge-Node", "")
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        try:
            check_segment(node, "node id")
        except ValueError:
            return None
        return node if scheme.lower() == "bearer" and self.c.credentials.verify(node, token.strip()) else None

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._refuse(411, "Content-Length required")
            return None
        if not 0 < length <= self.c.max_body:
            self._refuse(413, f"upload must be 1..{self.c.max_body} bytes")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self._refuse(400, f"truncated upload: {len(body)} of {length} bytes")
            return None
        return body

    def do_PUT(self) -> None:
        path = urlparse(self.path).path
        fid = path[len(UPLOAD_PATH):] if path.startswith(UPLOAD_PATH) else ""
        if not FRAME_ID.match(fid):
            return self._refuse(404, "PUT /api/v1/frames/<frame id>")
        node = self._authorized_node()
        if node is None:
            return self._refuse(401, "unknown node or bad credential")
        try:
            meta_len = int(self.headers.get("X-Edge-Meta-Length", ""))
        except ValueError:
            return self._refuse(400, "X-Edge-Meta-Length required")
        if meta_len > MAX_META:
            return self._refuse(413, "metadata too large")
        body = self._read_body()
        if body is None:
            return None
        try:
            meta, image = inbox.parse_upload(fid, node, body, meta_len, self.headers.get("X-Edge-Sha256", ""))
            with self.c.store_lock:
                stored = inbox.store(self.c.root, meta, image)
        except inbox.UploadError as exc:
            return self._refuse(exc.status, str(exc))
        self.c.count("stored" if stored.created else "duplicate")
        send_json(self, {"ok": True, "id": fid, "stored": stored.created}, 201 if stored.created else 200)
