"""Local services for the demo and the tests: a real Mosquitto broker and a Range-capable HTTP file server.

Stdlib + cryptography only (importable from the agent's venv). Both bind to loopback on free ports.
"""

from __future__ import annotations

import http.server
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.fleet.testpki import TLSFiles, make_test_pki

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class ServiceError(RuntimeError):
    pass


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the ephemeral range.

    Port 0 would hand out an ephemeral port, which any outgoing connection (a test's MQTT client) may take
    between this check and the server's bind; below the range only another listener can collide.
    """
    floor = _ephemeral_floor()
    for _ in range(200):
        port = random.randrange(20000, floor) if floor > 20100 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ServiceError("no free loopback port")


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1",
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something listens on host:port; fail at once if `proc` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"the server exited (status {proc.returncode}) before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def find_mosquitto() -> str | None:
    for c in MOSQUITTO_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("mosquitto")


@dataclass
class LocalBroker:
    """A real Mosquitto on loopback. Ports survive stop()/start(), so outage tests can restart it.

    users: {username: password} turns anonymous access off; acl: Mosquitto ACL file text;
    tls: adds a TLS listener (certificates generated here); websockets: adds a websockets listener.
    """

    workdir: Path
    users: dict[str, str] | None = None
    acl: str | None = None
    tls: bool = False
    websockets: bool = False
    client_certs: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    ws_port: int | None = None
    pki: dict[str, TLSFiles] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None
    _started: bool = False

    def __post_init__(self) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise ServiceError("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
        self.exe = exe
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.tls_port = free_port()
            self.pki = make_test_pki(self.workdir / "pki", ("server", *self.client_certs))
        if self.websockets:
            self.ws_port = free_port()
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        assert self.tls_port is not None
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def ws_url(self) -> str:
        assert self.ws_port is not None
        return f"ws://{self.host}:{self.ws_port}"

    @property
    def ca_path(self) -> Path | None:
        return self.pki["server"].ca if self.pki else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> None:
        lines = ["per_listener_settings false", "persistence false", f"log_dest file {self.log_path}",
                 "log_type all", "connection_messages true"]
        if os.geteuid() == 0:
            lines.append("user root")  # tests run as root in CI; don't drop to a user who can't read our files
        if self.users is not None:
            pw = self.workdir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True,
                               capture_output=True)
            pw.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl)
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        lines.append(f"listener {self.port} {self.host}")
        if self.tls_port:
            s = self.pki["server"]
            lines += [f"listener {self.tls_port} {self.host}", f"cafile {s.ca}", f"certfile {s.cert}",
                      f"keyfile {s.key}", "require_certificate false"]
        if self.ws_port:
            lines += [f"listener {self.ws_port} {self.host}", "protocol websockets"]
        self.config_path = self.workdir / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> LocalBroker:
        if self._proc and self._proc.poll() is None:
            return self
        # Debian's mosquitto speaks sd_notify: keep it off a NOTIFY_SOCKET meant for the agent under test.
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        first_start = not self._started
        for attempt in range(3):
            self._proc = subprocess.Popen([self.exe, "-c", str(self.config_path)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, env=env)
            try:
                for p in (self.port, self.tls_port, self.ws_port):
                    if p:
                        wait_port(p, timeout, proc=self._proc)
                self._started = True
                return self
            except ServiceError:
                died = self._proc.poll() is not None
                self.stop()
                if died and attempt < 2:  # most likely a port taken meanwhile: new ports before the first start
                    if first_start:
                        self._new_ports()
                    time.sleep(0.5)
                    continue
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise ServiceError(f"mosquitto did not start:\n{log[-2000:]}") from None
        raise AssertionError("unreachable")

    def _new_ports(self) -> None:
        self.port = free_port()
        self.tls_port = free_port() if self.tls_port else None
        self.ws_port = free_port() if self.ws_port else None
        self._write_config()

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range `Range: bytes=a-b` support, plus fault injection for tests."""

    server: _FileServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        fault = self.server.faults.get(rel)
        if fault in ("404", "500"):
            self.send_error(int(fault))
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data_len = path.stat().st_size
        start, end = 0, data_len - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            try:
                start = int(a) if a else max(0, data_len - int(b))
                end = min(int(b), data_len - 1) if (a and b) else data_len - 1
            except ValueError:
                self.send_error(400)
                return
            if start >= data_len:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{data_len}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{data_len}")
        else:
            self.send_response(200)
        length = end - start + 1
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if not send_body:
            return
        with open(path, "rb") as f:
            f.seek(start)
            remaining = length
            if fault == "truncate":
                remaining = length // 2  # promise the whole file, send half, then hang up
            while remaining > 0:
                chunk = f.read(min(65536, remaining))
                if not chunk:
                    break
                if fault == "slow":
                    time.sleep(self.server.slow_seconds)
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                remaining -= len(chunk)
        if fault == "truncate":
            self.close_connection = True


class _FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    faults: dict[str, str]
    requests: list[tuple[str, str, str | None]]
    slow_seconds: float


class FileServer:
    """Serves `root` on loopback. `faults[relpath] = '404' | '500' | 'slow' | 'truncate'` injects failures."""

    def __init__(self, root: Path | None = None, port: int = 0) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="edge-http-"))
        self.root.mkdir(parents=True, exist_ok=True)
        root_str = str(self.root)

        class Handler(_RangeHandler):
            def __init__(self, *a: object, **kw: object) -> None:
                super().__init__(*a, directory=root_str, **kw)  # type: ignore[arg-type]

        self._httpd = _FileServer(("127.0.0.1", port), Handler)
        self._httpd.faults = {}
        self._httpd.requests = []
        self._httpd.slow_seconds = 2.0
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> dict[str, str]:
        return self._httpd.faults

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        return self._httpd.requests

    def set_slow_seconds(self, seconds: float) -> None:
        self._httpd.slow_seconds = seconds

    def start(self) -> FileServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http-file-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
