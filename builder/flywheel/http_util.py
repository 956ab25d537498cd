"""Small response helpers shared by the collector's node API and the review routes (stdlib handlers)."""

from __future__ import annotations

import json
import ssl
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from builder.dashboard.auth import AccessPolicy
from builder.dashboard.server import CSP


def secure(httpd: HTTPServer, tls: ssl.SSLContext | None, access: AccessPolicy, host: str) -> AccessPolicy:
    """TLS on the listening socket (each handshake then runs in its connection's thread, not in accept()),
    and the access policy's allow-list for the bound port."""
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    access.tls = tls is not None
    access.listening(host, int(httpd.server_address[1]))
    return access


def base_url(address: tuple[Any, ...], tls: bool) -> str:
    """A URL this machine can open for a bound address (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(address[0]), str(address[0]))
    return "{}://{}:{}".format("https" if tls else "http", f"[{host}]" if ":" in host else host, address[1])


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
