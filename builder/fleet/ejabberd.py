"""A real ejabberd (its MQTT 5 module, mod_mqtt) on loopback: the second, independent broker the fleet is
tested against (tests/test_second_broker.py, docs/BROKERS.md). Stdlib only, like devservices.

ejabberd runs straight from `erl`, not through `ejabberdctl`: that script `su`s to the `ejabberd` user (who
cannot read a test's tmp dir) and registers an Erlang node with epmd. Without a node name the VM is
`nonode@nohost`: no epmd, no cookie, no distribution port, so it runs as root (CI) or any user, several side
by side. Config, Mnesia spool (retained messages survive stop/start) and logs live in `workdir`.

Auth: anonymous (`login_anon`: any user name, any password) unless `users` is given; then passwords are
checked by a small external-auth program (ejabberd's extauth protocol) reading a JSON file in `workdir`.
`fleet_acl=True` turns docs/mosquitto/edge-fleet.acl into mod_mqtt's access_publish/access_subscribe.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.fleet.devservices import ServiceError, free_port, wait_port

EBIN_GLOBS = ("/usr/lib/*/ejabberd-*/ebin/ejabberd.app", "/usr/lib/erlang/lib/ejabberd-*/ebin/ejabberd.app")
ADMIN_ACL, HA_ACL = "fleet_admin", "homeassistant"

# ejabberd's extauth protocol: 2-byte big-endian length + "cmd:user:server[:password]" in, 2-byte length
# (always 2) + 2-byte result (1 = yes) out. Users are node ids or operator names (lowercase: ejabberd
# nodepreps user names before asking).
EXTAUTH = """\
import json, struct, sys
users = json.load(open(sys.argv[1]))
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = inp.read(2)
    if len(head) < 2:
        break
    parts = inp.read(struct.unpack(">H", head)[0]).decode("utf-8", "replace").split(":", 3)
    ok = (parts[0] == "auth" and len(parts) == 4 and users.get(parts[1]) == parts[3]) or \\
         (parts[0] == "isuser" and len(parts) > 1 and parts[1] in users)
    out.write(struct.pack(">HH", 2, int(ok)))
    out.flush()
"""


def find_ejabberd() -> tuple[str, Path] | None:
    """(erl, the directory holding ejabberd-<version>/) of Debian's ejabberd package, or None."""
    erl = shutil.which("erl")
    apps = sorted(p for g in EBIN_GLOBS for p in glob.glob(g))
    if erl is None or not apps:
        return None
    return erl, Path(apps[-1]).parents[2]


def fleet_acl(prefix: str = "edgefleet") -> dict[str, dict[str, list[Any]]]:
    """docs/mosquitto/edge-fleet.acl as mod_mqtt options.

    mod_mqtt allows a topic when any filter matching it allows the client and refuses the rest; `%u` in a
    filter is the client's user name (nodeprepped: lower case). A subscription's filter is matched as a
    topic, so `+` in it never matches `%u`: a node cannot subscribe to other nodes' topics by wildcard.
    """
    anyone: list[Any] = ["allow"]
    admin: list[Any] = [{"allow": ADMIN_ACL}]
    ha: list[Any] = [{"allow": HA_ACL}]
    publish: dict[str, list[Any]] = {
        f"{prefix}/node/%u/#": anyone,  # state, telemetry, update, availability (the will), replies
        "homeassistant/+/%u/+/config": anyone,  # its own Home Assistant discovery configs
        f"{prefix}/admin/+/replies/#": anyone,  # command replies (agent.service.commands checks the rest)
        f"{prefix}/#": admin,
        "homeassistant/#": ha,
    }
    subscribe: dict[str, list[Any]] = {
        f"{prefix}/node/%u/#": anyone,  # its cmd, shadow
        f"{prefix}/announce/#": anyone,
        f"{prefix}/keyring": anyone,
        f"{prefix}/#": admin,
        f"{prefix}/node/+/#": ha,
        "homeassistant/#": [*admin, *ha],
    }
    return {"access_publish": publish, "access_subscribe": subscribe}


@dataclass
class LocalEjabberd:
    """A real ejabberd with one MQTT listener on loopback. Ports survive stop()/start()."""

    workdir: Path
    users: dict[str, str] | None = None
    fleet_acl: bool = False
    admins: tuple[str, ...] = ("fleet-admin",)
    prefix: str = "edgefleet"
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    boot_seconds: float | None = None  # wall time of the last start() until the MQTT port answered
    _proc: subprocess.Popen[bytes] | None = None
    _started: bool = False

    def __post_init__(self) -> None:
        found = find_ejabberd()
        if found is None:
            raise ServiceError("ejabberd is not installed (apt-get install ejabberd)")
        self.erl, self.erl_libs = found
        self.workdir = Path(self.workdir)
        for d in ("spool", "log"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        """The broker URL with `user`'s credentials in it (the rollout and dashboard links read them)."""
        password = (self.users or {}).get(user, "x")
        return f"mqtt://{user}:{password}@{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "log" / "ejabberd.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "ejabberd.yml"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def config(self) -> dict[str, Any]:
        """The ejabberd configuration (YAML is a superset of JSON: written as JSON)."""
        mqtt: dict[str, Any] = {"match_retained_limit": "infinity", "max_topic_depth": 16}
        cfg: dict[str, Any] = {
            "hosts": ["localhost"], "loglevel": "info", "log_rotate_count": 0, "hide_sensitive_log_data": True,
            "listen": [{"port": self.port, "ip": self.host, "module": "mod_mqtt",
                        "max_payload_size": 1048576}],  # as message_size_limit in edge-fleet.conf
            "modules": {"mod_mqtt": mqtt},
            "acl": {ADMIN_ACL: {"user": list(self.admins)}, HA_ACL: {"user": ["homeassistant"]}},
        }
        if self.fleet_acl:
            mqtt.update(fleet_acl(self.prefix))
        if self.users is None:
            cfg.update({"auth_method": ["anonymous"], "anonymous_protocol": "login_anon",
                        "allow_multiple_connections": True})
        else:
            users, script = self.workdir / "users.json", self.workdir / "extauth.py"
            users.write_text(json.dumps(self.users))
            users.chmod(0o600)
            script.write_text(EXTAUTH)
            cfg.update({"auth_method": ["external"], "extauth_pool_size": 1,
                        "extauth_program": f"{sys.executable} {script} {users}"})
        return cfg

    def _write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")

    def _env(self) -> dict[str, str]:
        # ejabberd speaks sd_notify: keep it off a NOTIFY_SOCKET meant for the agent under test.
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env.update({"EJABBERD_CONFIG_PATH": str(self.config_path), "EJABBERD_LOG_PATH": str(self.log_path),
                    "ERL_LIBS": str(self.erl_libs), "HOME": str(self.workdir),
                    "ERL_CRASH_DUMP": str(self.workdir / "log" / "erl_crash.dump"), "ERL_CRASH_DUMP_BYTES": "0"})
        return env

    def _spawn(self) -> subprocess.Popen[bytes]:
        spool = self.workdir / "spool"
        with open(self.workdir / "log" / "console.log", "ab") as out:
            return subprocess.Popen([self.erl, "-noinput", "-noshell", "-mnesia", "dir", f'"{spool}"',
                                     "-s", "ejabberd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._env(), cwd=self.workdir)

    def start(self, timeout: float = 30.0) -> LocalEjabberd:
        if self._proc and self._proc.poll() is None:
            return self
        for attempt in range(3):
            t0 = time.monotonic()
            self._proc = self._spawn()
            try:
                wait_port(self.port, timeout, host=self.host, proc=self._proc)
            except ServiceError as exc:
                self.stop()
                # ejabberd keeps running when a listener cannot bind: a port taken meanwhile shows in its log
                taken = "eaddrinuse" in self.log_text().lower()
                if taken and not self._started and attempt < 2:
                    self.port = free_port()
                    self._write_config()
                    continue
                raise ServiceError(f"ejabberd did not start: {exc}\n{self.log_text()[-3000:]}") from None
            self.boot_seconds = time.monotonic() - t0
            self._started = True
            return self
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (the VM runs init:stop, Mnesia closes its files: about 1 s), SIGKILL after `timeout`.

        Stopped within a second or two of its first boot, while Mnesia is still committing the new schema, the
        VM can take 13 s to wind down (mnesia_tm crashes, supervisors wait out their shutdown timeouts)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalEjabberd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
