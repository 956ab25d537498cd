"""docs/mosquitto/edge-fleet.conf itself, run by a real Mosquitto with its paths and ports moved into a tmp dir.

Shared by the broker-security and MQTT-hardening tests, so both exercise the file users install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.fleet.devservices import ServiceError, find_mosquitto, free_port, wait_port
from builder.fleet.testpki import make_test_pki

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ShippedPorts:
    node_port: int  # TLS listener for nodes (8883 in the shipped file)
    admin_port: int  # TLS listener for admin tools (8884)
    plain_port: int  # loopback plain listener (1883)
    ca: Path
    log: Path


def _config(tmp: Path, ports: tuple[int, int, int], cert: Path, key: Path, ca: Path) -> str:
    node_port, admin_port, plain_port = ports
    conf = (ROOT / "docs" / "mosquitto" / "edge-fleet.conf").read_text()
    for old, new in (("/etc/mosquitto/passwd-admin", tmp / "passwd-admin"),
                     ("/etc/mosquitto/passwd\n", f"{tmp / 'passwd'}\n"),
                     ("/etc/mosquitto/edge-fleet.acl", tmp / "acl"),
                     ("/var/lib/mosquitto/", f"{tmp}/"), ("/etc/mosquitto/certs/server.crt", cert),
                     ("/etc/mosquitto/certs/server.key", key), ("/etc/mosquitto/certs/ca.crt", ca),
                     ("listener 8883", f"listener {node_port} 127.0.0.1"),
                     ("listener 8884", f"listener {admin_port} 127.0.0.1"),
                     ("listener 1883 ", f"listener {plain_port} ")):
        assert old in conf, old
        conf = conf.replace(old, str(new))
    if os.geteuid() == 0:
        conf += "user root\n"  # CI runs as root: don't drop to a user who cannot read tmp
    return conf + f"log_dest file {tmp / 'log'}\nlog_type all\n"


@contextmanager
def shipped_mosquitto(tmp: Path, acl: str, nodes: dict[str, str], admins: dict[str, str]) -> Iterator[ShippedPorts]:
    exe = find_mosquitto()
    if exe is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto not installed")
    pki = make_test_pki(tmp / "certs", ("server",))["server"]
    (tmp / "acl").write_text(acl)
    for name, users in (("passwd", nodes), ("passwd-admin", admins)):
        for user, pw in users.items():
            subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if not (tmp / name).exists() else []),
                            str(tmp / name), user, pw], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    for attempt in range(3):  # a port taken between free_port() and the bind: new ports, once or twice
        ports = (free_port(), free_port(), free_port())
        (tmp / "mosquitto.conf").write_text(_config(tmp, ports, pki.cert, pki.key, pki.ca))
        proc = subprocess.Popen([exe, "-c", str(tmp / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        try:
            for p in ports:
                wait_port(p, 15, proc=proc)
        except ServiceError:
            proc.kill()
            proc.wait(10)
            if attempt == 2:
                raise
            continue
        try:
            yield ShippedPorts(*ports, pki.ca, tmp / "log")
        finally:
            proc.terminate()
            proc.wait(10)
        return
