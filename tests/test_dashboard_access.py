"""Who may use the dashboard, over real HTTP(S) on loopback against a real Mosquitto.

Every API route refuses a request without the token (401), with a foreign Host (403: DNS rebinding), and
every state-changing one a foreign or missing Origin (403); the page logs in with `/?token=`; a folder in
--bundles that a trusted key did not sign is listed as refused and cannot be published; every login and
POST leaves an audit line; the server also speaks TLS directly.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_dashboard_server import AUTH, SSE, TOKEN, fleet_key, get, post
from test_dashboard_state import tiny_bundle

from agent.protocol.topics import Topics
from agent.security.signing import SigningKey
from builder.dashboard.audit import AuditLog, read
from builder.dashboard.auth import AccessPolicy
from builder.dashboard.rollout import PublishConfig
from builder.dashboard.rollouts import StagedRollouts
from builder.dashboard.server import Dashboard, tls_context
from builder.dashboard.state import FleetState
from builder.fleet.devservices import LocalBroker, free_port, wait_port

T = Topics("edgefleet")
API_GETS = ["/api/state", "/api/bundles", "/api/snapshot/node-a", "/api/events", "/api/rollouts"]
# Every state-changing route (builder.dashboard.routes.ROUTES), with its audit action.
API_POSTS = {"/api/rollout": "publish", "/api/rollouts/start": "rollout-start", "/api/rollouts/pause": "rollout-pause",
             "/api/rollouts/resume": "rollout-resume", "/api/rollouts/abort": "rollout-abort", "/api/command": "command"}


def _dashboard(tmp_path: Path, broker_url: str | None, **kw: object) -> Dashboard:
    key = tmp_path / "keys" / "fleet.key"
    key.parent.mkdir(exist_ok=True)
    if not key.exists():
        SigningKey.generate().save(key)
    link = None
    state = FleetState(T)
    if broker_url is not None:
        from builder.dashboard.link import FleetLink

        link = FleetLink(broker_url, state).start()
    cfg = PublishConfig(broker_url or "mqtt://127.0.0.1:9", T, http_base="http://127.0.0.1:9/bundles", key=key)
    (tmp_path / "bundles").mkdir(exist_ok=True)
    rollouts = StagedRollouts(cfg, tmp_path / "rollouts").start() if broker_url is not None else None
    return Dashboard(state, link, [tmp_path / "bundles"], cfg, batch_s=0.05, rollouts=rollouts,
                     audit=AuditLog(tmp_path / "audit.jsonl"), **kw).start()  # type: ignore[arg-type]


@pytest.fixture
def dash(mqtt_broker: LocalBroker, tmp_path: Path) -> Iterator[Dashboard]:
    d = _dashboard(tmp_path, mqtt_broker.url, access=AccessPolicy(TOKEN, ["dash.example.org"]))
    yield d
    d.stop()


def request(d: Dashboard, method: str, path: str, headers: dict[str, str], body: bytes | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read() if path != "/api/events" else b""
    c.close()
    return out


def test_every_api_route_and_the_event_stream_need_the_token(dash: Dashboard) -> None:
    for path in API_GETS:
        assert get(dash, path, headers={})[0] == 401, path
        assert get(dash, path, headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401, path
        assert get(dash, path, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401, path
    status, headers, _ = request(dash, "GET", "/api/events", {})
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    # The page asks whether it is logged in without the token (a logged-out page is not an error).
    assert json.loads(get(dash, "/api/session", headers={})[1]) == {"ok": True, "logged_in": False}
    assert json.loads(get(dash, "/api/session")[1])["logged_in"] is True
    sse = SSE(dash.port)  # with the token: the stream opens
    assert sse.next()["type"] == "snapshot"
    sse.close()
    # The page and its static files load without it (the page then shows its login prompt).
    for path in ("/", "/static/app.js", "/static/style.css", "/healthz"):
        assert get(dash, path, headers={})[0] == 200, path


def test_state_changing_requests_need_token_host_and_origin(dash: Dashboard) -> None:
    body = {"bundle": "nope", "target": "all"}
    assert post(dash, body)[0] == 400  # everything right: reaches the handler (unknown bundle)
    assert post(dash, body, headers={"Authorization": ""})[0] == 401
    assert post(dash, body, headers={"Authorization": "Bearer not-the-token-0123456789"})[0] == 401
    assert post(dash, body, headers={"Origin": "http://evil.example"})[0] == 403
    assert post(dash, body, headers={"Origin": f"http://127.0.0.1:{dash.port + 1}"})[0] == 403
    assert post(dash, body, headers={"Origin": "null"})[0] == 403
    assert post(dash, body, headers={"Origin": f"http://dash.example.org:{dash.port}"})[0] == 400  # --allow-host
    # No Origin at all: refused too (only non-browser clients omit it, and they can send it).
    status, _, out = request(dash, "POST", "/api/rollout", {"Content-Type": "application/json", **AUTH},
                             json.dumps(body).encode())
    assert status == 403 and b"Origin" in out
    # DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example.
    for host in ("evil.example", f"evil.example:{dash.port}", f"127.0.0.1:{dash.port + 1}", ""):
        hdrs = {"Host": host, "Origin": f"http://{host}"}
        assert post(dash, body, headers=hdrs)[0] == 403, host
        for path in ("/", "/static/app.js", "/api/session", *API_GETS):
            assert get(dash, path, headers={**AUTH, "Host": host})[0] == 403, (host, path)
    for host in (f"localhost:{dash.port}", f"[::1]:{dash.port}", "dash.example.org"):
        assert get(dash, "/api/session", headers={**AUTH, "Host": host})[0] == 200, host
    entries = read(dash.audit.path)  # type: ignore[union-attr]
    denied = [e for e in entries if e["outcome"].startswith("denied")]
    assert len(denied) == 10 and all(e["who"] == "anonymous" and e["remote"] == "127.0.0.1"
                                     and e["action"] == "publish" for e in denied)
    assert {e["outcome"][:10] for e in denied} == {"denied 401", "denied 403"}


def test_every_state_changing_route_needs_token_host_and_origin_and_is_audited(dash: Dashboard) -> None:
    """The table's POST routes (publish, staged rollouts, fleet commands) all get the same locks and audit."""
    from builder.dashboard.routes import ROUTES

    assert {r.path for r in ROUTES if r.method == "POST"} == set(API_POSTS)
    refusals = [({"Authorization": ""}, 401), ({"Authorization": "Bearer not-the-token-0123456789"}, 401),
                ({"Origin": "http://evil.example"}, 403), ({"Origin": "null"}, 403),
                ({"Host": "evil.example", "Origin": "http://evil.example"}, 403)]
    for path, action in API_POSTS.items():
        for headers, status in refusals:
            c = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
            c.request("POST", path, body=b'{"id": "x", "command": "inventory", "nodes": ["node-a"]}',
                      headers={"Content-Type": "application/json", "Origin": dash.url, **AUTH, **headers})
            assert c.getresponse().status == status, (path, headers)
            c.close()
        status, _, out = request(dash, "POST", path, {"Content-Type": "application/json", **AUTH}, b"{}")
        assert status == 403 and b"Origin" in out, path  # no Origin at all
        entries = [e for e in read(dash.audit.path) if e["action"] == action]  # type: ignore[union-attr]
        assert len(entries) == len(refusals) + 1 and all(e["outcome"].startswith("denied") for e in entries), path
        # With every lock passed the handler answers (and that is audited too): 4xx for these bodies.
        c = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
        c.request("POST", path, body=b'{"id": "no-such-rollout"}',
                  headers={"Content-Type": "application/json", "Origin": dash.url, **AUTH})
        r = c.getresponse()
        assert 400 <= r.status < 500 and json.loads(r.read())["ok"] is False, path
        c.close()
        last = [e for e in read(dash.audit.path) if e["action"] == action][-1]  # type: ignore[union-attr]
        assert last["who"] == dash.access.token_id and last["outcome"].startswith("error 4"), (path, last)


def test_page_login_sets_an_httponly_strict_cookie(dash: Dashboard) -> None:
    status, headers, body = request(dash, "GET", "/?token=wrong-token-0123456789", {})
    assert status == 401 and b"login-form" in body and "set-cookie" not in headers
    status, headers, _ = request(dash, "GET", f"/?token={TOKEN}", {})
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    pair = cookie.split(";")[0]
    assert get(dash, "/api/state", headers={"Cookie": pair})[0] == 200
    assert get(dash, "/api/state", headers={"Cookie": pair.split("=")[0] + "=x" * 20})[0] == 401
    # The cookie alone does not make a cross-site POST: the Origin is still checked.
    assert post(dash, {"bundle": "x"}, headers={"Authorization": "", "Cookie": pair})[0] == 401  # empty bearer
    c = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
    c.request("POST", "/api/rollout", body=b'{"bundle": "x"}',
              headers={"Content-Type": "application/json", "Cookie": pair, "Origin": "http://evil.example"})
    assert c.getresponse().status == 403
    c.close()
    outcomes = [(e["action"], e["outcome"]) for e in read(dash.audit.path)]  # type: ignore[union-attr]
    assert ("login", "denied 401: bad token") in outcomes and ("login", "ok") in outcomes


def test_only_bundles_signed_by_a_trusted_key_are_offered(dash: Dashboard) -> None:
    root = dash.bundle_roots[0]
    tiny_bundle(root / "trusted-v2", "shapes", 2, fleet_key(dash))
    tiny_bundle(root / "stranger-v3", "shapes", 3, SigningKey.generate())  # signed, but by an unknown key
    tiny_bundle(root / "unsigned-v4", "shapes", 4)
    (root / "unsigned-v4" / "manifest.sig").unlink()
    tiny_bundle(root / "tampered-v5", "shapes", 5, fleet_key(dash))
    (root / "tampered-v5" / "model_cpu.tflite").write_bytes(b"TFL3 swapped model")
    listing = {b["rel"]: b for b in json.loads(get(dash, "/api/bundles")[1])["bundles"]}
    assert listing["trusted-v2"]["refused"] is None
    assert "unknown signing key" in listing["stranger-v3"]["refused"]
    assert "manifest.sig" in listing["unsigned-v4"]["refused"]
    assert "model_cpu.tflite" in listing["tampered-v5"]["refused"]
    for rel in ("stranger-v3", "unsigned-v4", "tampered-v5"):
        status, out = post(dash, {"bundle": listing[rel]["id"], "target": "all"})
        assert status == 400 and "refused" in out["error"], out
    assert dash.state.rollouts() == []
    # A trusted folder swapped after it was listed is checked again (on the copy that gets published).
    (root / "trusted-v2" / "model_cpu.tflite").write_bytes(b"TFL3 swapped after listing")
    status, out = post(dash, {"bundle": listing["trusted-v2"]["id"], "target": "all"})
    assert status == 400 and "model_cpu.tflite" in out["error"]
    assert dash.state.rollouts() == []
    # Without any trusted key nothing is offered.
    dash.publish_cfg = PublishConfig(dash.publish_cfg.broker_url, T, http_base="http://x", key=dash.publish_cfg.key,
                                     trusted_keys=root / "no-such-keys")
    assert all(b["refused"] for b in json.loads(get(dash, "/api/bundles")[1])["bundles"])
    publishes = [e for e in read(dash.audit.path) if e["action"] == "publish"]  # type: ignore[union-attr]
    assert len(publishes) == 4 and all(e["outcome"].startswith("error 400") and e["target"] == "all"
                                       and e["who"] == dash.access.token_id for e in publishes)


def test_a_publish_is_audited_with_who_what_where_when(dash: Dashboard) -> None:
    tiny_bundle(dash.bundle_roots[0] / "shapes-v2", "shapes", 2, fleet_key(dash))
    bid = json.loads(get(dash, "/api/bundles")[1])["bundles"][0]["id"]
    status, out = post(dash, {"bundle": bid, "target": "group:lab"})
    assert status == 200 and out["ok"]
    e = read(dash.audit.path)[-1]  # type: ignore[union-attr]
    assert (e["action"], e["outcome"], e["target"], e["bundle"]) == ("publish", "ok", "group:lab", bid)
    assert (e["who"], e["remote"], e["name"], e["version"]) == (dash.access.token_id, "127.0.0.1", "shapes", 2)
    assert e["topic"] == out["topic"] and abs(datetime.fromisoformat(e["time"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert TOKEN not in dash.audit.path.read_text()  # type: ignore[union-attr]


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return tmp / "cert.pem", tmp / "key.pem"


def test_direct_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    d = _dashboard(tmp_path, None, access=AccessPolicy(TOKEN), tls=tls_context(cert, key))
    try:
        assert d.url.startswith("https://")
        client = ssl.create_default_context(cafile=str(cert))
        c = http.client.HTTPSConnection("localhost", d.port, timeout=10, context=client)
        c.request("GET", f"/?token={TOKEN}")
        r = c.getresponse()
        r.read()
        assert r.status == 303 and "Secure" in (r.getheader("Set-Cookie") or "")
        c.request("GET", "/api/session", headers=AUTH)
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["logged_in"] is True
        c.close()
        c = http.client.HTTPSConnection("localhost", d.port, timeout=10, context=client)
        c.request("POST", "/api/rollout", body=b"{}", headers={"Content-Type": "application/json", **AUTH,
                                                                "Origin": f"http://localhost:{d.port}"})
        assert c.getresponse().status == 403  # over TLS, only an https:// Origin is this server
        c.close()
        # Plain HTTP on the TLS port gets no page.
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            p = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
            p.request("GET", "/api/session", headers=AUTH)
            p.getresponse().read()
    finally:
        d.stop()


def test_the_command_prints_a_login_url_and_honours_the_env_token(mqtt_broker: LocalBroker, tmp_path: Path) -> None:
    def start(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "dashboard", "--broker", mqtt_broker.url,
                                 "--port", str(port), "--audit-log", str(tmp_path / "audit.jsonl")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**__import__("os").environ, **env})
        wait_port(port, 20)
        return proc, port

    proc, port = start({"EDGE_DASHBOARD_TOKEN": ""})
    assert proc.stdout is not None
    line = ""
    while "?token=" not in line:
        line = proc.stdout.readline()
        assert line, "no login URL printed"
    proc.terminate()
    proc.wait(10)
    url = line.split()[-1]
    assert url.startswith(f"http://127.0.0.1:{port}/?token=") and len(url.split("=", 1)[1]) >= 32
    proc, port = start({"EDGE_DASHBOARD_TOKEN": TOKEN})
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/api/session", headers=AUTH)
        assert json.loads(c.getresponse().read())["logged_in"] is True
        c.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert TOKEN not in out and "?token=" not in out  # an operator's token is never printed
