"""The review page's routes, for any stdlib HTTP handler: the collector serves them today; the dashboard can
mount the same object (docs/FLYWHEEL.md). Access is the dashboard's operator token (builder.dashboard.auth).

    GET  /review               the page (static/review.html); /review?token=T logs in (cookie) and redirects
    GET  /static/review.js     its script
    GET  /api/review/items     {"class_names": [...], "items": [{"key", "status"}]}
    GET  /api/review/item?key=K      the ReviewItem (pseudo-labels, boxes, status, capture facts)
    GET  /api/review/image?key=K     the image
    POST /api/review/item?key=K      {"action": "accept" | "correct" | "reject", "boxes": [...]} -> the item
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from builder.dashboard.auth import AccessError, AccessPolicy
from builder.dashboard.server import CONTENT_TYPES, STATIC
from builder.flywheel import review
from builder.flywheel.http_util import send, send_error, send_json

PAGES = {"/review": "review.html", "/static/review.js": "review.js", "/static/style.css": "style.css"}
MAX_POST = 256 * 1024


class ReviewRoutes:
    tab = ("review", "/review")  # the dashboard's header link when it mounts these routes

    def __init__(self, dataset: Path, access: AccessPolicy) -> None:
        self.dataset, self.access = Path(dataset), access

    def _allowed(self, h: BaseHTTPRequestHandler, mutating: bool) -> bool:
        try:
            self.access.check_host(h.headers.get("Host"))
            if mutating:
                self.access.check_origin(h.headers.get("Origin"))
            self.access.check_token(h.headers.get("Authorization"), h.headers.get("Cookie"))
        except AccessError as exc:
            send_error(h, exc.status, str(exc))
            return False
        return True

    def get(self, h: BaseHTTPRequestHandler) -> bool:
        """Serve a GET if it is one of ours (True), else leave it to the caller."""
        url = urlparse(h.path)
        if url.path in PAGES:
            token = parse_qs(url.query).get("token")
            if url.path == "/review" and token:
                ok = self.access.valid(token[0])
                send(h, 303 if ok else 401, b"", "text/plain",
                     {"Location": "/review", "Set-Cookie": self.access.set_cookie()} if ok else None)
                return True
            name = PAGES[url.path]
            send(h, 200, (STATIC / name).read_bytes(), CONTENT_TYPES[Path(name).suffix])
            return True
        if not url.path.startswith("/api/review/"):
            return False
        if self._allowed(h, mutating=False):
            self._api_get(h, url.path, parse_qs(url.query).get("key", [""])[0])
        return True

    def _api_get(self, h: BaseHTTPRequestHandler, path: str, key: str) -> None:
        try:
            if path == "/api/review/items":
                return send_json(h, {"class_names": review.class_names(self.dataset),
                                     "items": review.list_items(self.dataset)})
            item = review.load_item(self.dataset, key)
            if path == "/api/review/item":
                return send(h, 200, item.model_dump_json().encode(), "application/json")
            if path == "/api/review/image":
                img = self.dataset / item.image
                ctype = "image/png" if img.suffix == ".png" else "image/jpeg"
                return send(h, 200, img.read_bytes(), ctype)
        except (review.ReviewError, OSError) as exc:
            return send_error(h, 404, str(exc))
        send_error(h, 404, f"no such endpoint: {path}")

    def post(self, h: BaseHTTPRequestHandler) -> bool:
        url = urlparse(h.path)
        if url.path != "/api/review/item":
            return False
        h.close_connection = True  # a refused request's body is never read
        if not self._allowed(h, mutating=True):
            return True
        if not h.headers.get("Content-Type", "").startswith("application/json"):
            send_error(h, 415, "send application/json")
            return True
        try:
            length = int(h.headers.get("Content-Length") or 0)
            if length > MAX_POST:
                raise ValueError("body too large")
            body = json.loads(h.rfile.read(length) or b"{}")
            key = parse_qs(url.query).get("key", [""])[0]
            item = review.apply(self.dataset, key, str(body.get("action")), body.get("boxes"))
        except (ValueError, TypeError, AttributeError) as exc:
            send_error(h, 400, str(exc))
            return True
        send(h, 200, item.model_dump_json().encode(), "application/json")
        return True
