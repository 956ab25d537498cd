"""Small response helpers shared by the collector's node API and the review routes (stdlib handlers)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from builder.dashboard.server import CSP


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
         headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    base = {"Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Content-Security-Policy": CSP,
            "Referrer-Policy": "no-referrer"}
    for name, value in {**base, **(headers or {})}.items():
        h.send_header(name, value)
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def send_json(h: BaseHTTPRequestHandler, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
    send(h, status, json.dumps(obj, default=str).encode(), "application/json", headers)


def send_error(h: BaseHTTPRequestHandler, status: int, message: str) -> None:
    send_json(h, {"ok": False, "error": message}, status)
