"""Who may use the dashboard: a login token, and the Host/Origin allow-list.

The dashboard publishes with the fleet's signing key, so its API is as sensitive as that key:
- every API request (state-changing ones and the event stream) needs the token, sent as
  `Authorization: Bearer TOKEN` or as the cookie the page gets after opening `/?token=TOKEN` (Jupyter's way);
- the Host header must name this server (a foreign Host is a DNS-rebinding page talking to loopback);
- a state-changing request must carry an Origin naming this server (no cross-site requests, even with
  the cookie; SameSite=Strict is the second lock).
Comparisons of secrets are constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlparse

TOKEN_ENV = "EDGE_DASHBOARD_TOKEN"
MIN_TOKEN_LEN = 16
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


class AccessError(Exception):
    """A request refused: `status` is 401 (no/bad token) or 403 (foreign Host/Origin)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _host_literal(host: str) -> str:
    """An address as it appears in a Host header ("::1" -> "[::1]")."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class AccessPolicy:
    """The token and the hosts this dashboard answers to. `listening(host, port)` completes the allow-list
    once the port is known (`--port 0`)."""

    def __init__(self, token: str | None = None, extra_hosts: Iterable[str] = (), tls: bool = False) -> None:
        if token is not None and len(token) < MIN_TOKEN_LEN:
            raise ValueError(f"the dashboard token must be at least {MIN_TOKEN_LEN} characters")
        self.generated = token is None
        self.token = token or secrets.token_urlsafe(32)
        self.extra_hosts = [h.strip().lower() for h in extra_hosts if h.strip()]
        self.tls = tls
        self.allowed: set[str] = set()
        self.port = 0

    @property
    def token_id(self) -> str:
        """Names the token in the audit log without revealing it."""
        return "token:" + hashlib.sha256(self.token.encode()).hexdigest()[:8]

    def cookie_name(self) -> str:
        # Cookies are not isolated by port: two dashboards on one host must not overwrite each other's login.
        return f"edge_dashboard_{self.port}"

    def listening(self, host: str, port: int) -> None:
        self.port = port
        names = {_host_literal(host.lower()), *LOOPBACK}
        self.allowed = {f"{n}:{port}" for n in names if n not in ("0.0.0.0", "[::]", "")}
        for h in self.extra_hosts:
            # "name" allows name:PORT and the bare name (a reverse proxy on 443/80 forwards Host as is).
            self.allowed |= {h} if urlparse(f"//{h}").port else {h, f"{h}:{port}"}

    # ---- checks (each raises AccessError) --------------------------------------------------------
    def check_host(self, host: str | None) -> None:
        if not host or host.strip().lower() not in self.allowed:
            raise AccessError(403, f"Host {host!r} is not one this dashboard serves (add it with --allow-host)")

    def check_origin(self, origin: str | None) -> None:
        if not origin:
            raise AccessError(403, "a state-changing request must carry an Origin header")
        u = urlparse(origin)
        schemes = ("https",) if self.tls else ("http", "https")  # http behind a TLS-terminating proxy
        if u.scheme not in schemes or u.netloc.lower() not in self.allowed:
            raise AccessError(403, f"cross-origin request from {origin!r} refused")

    def valid(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def check_token(self, authorization: str | None, cookie_header: str | None) -> None:
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.valid(value.strip()):
                return
            raise AccessError(401, "bad bearer token")
        if self.valid(self.cookie_value(cookie_header)):
            return
        raise AccessError(401, "login required: open the URL with ?token=... printed at start")

    def cookie_value(self, cookie_header: str | None) -> str | None:
        if not cookie_header:
            return None
        try:
            jar = SimpleCookie(cookie_header)
        except CookieError:
            return None
        morsel = jar.get(self.cookie_name())
        return morsel.value if morsel is not None else None

    def set_cookie(self) -> str:
        """The Set-Cookie value after a good `?token=` login (session cookie, not readable by scripts)."""
        secure = "; Secure" if self.tls else ""
        return f"{self.cookie_name()}={self.token}; Path=/; HttpOnly; SameSite=Strict{secure}"

    def login_url(self, base: str) -> str:
        return f"{base}/?token={self.token}"
