"""edge-agent doctor: as a user runs it here (no TPU), and each check against fake trees (tests/data/doctor)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import load_config
from agent.doctor.model import CheckResult, DoctorContext, ok
from agent.doctor.registry import CHECKS, Check, run_check, run_checks
from agent.inference.backends.edgetpu import enumerate_tpus
from agent.system.clock import STA_UNSYNC, TIME_ERROR, TimexReading, clock_status
from agent.system.host import HostRoot
from agent.updates.store import ModelRecord, ModelStore, StoreState
from builder.fleet.devservices import free_port

ROOT = Path(__file__).resolve().parents[1]
TREES = ROOT / "tests" / "data" / "doctor"
VCGENCMD = ROOT / "tests" / "data" / "vcgencmd"
NAMES = [c.name for c in CHECKS]


def doctor(*args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """Run `edge-agent doctor --json ...` as a subprocess; (exit status, {check name: result})."""
    r = subprocess.run([sys.executable, "-m", "agent.cli", "doctor", "--json", *args], capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT)
    report = json.loads(r.stdout)
    return r.returncode, {**{c["name"]: c for c in report["checks"]}, "_report": report}


def tree(name: str, tmp_path: Path) -> Path:
    """A writable copy of a fake tree (git keeps no modes or owners; tests set them)."""
    dst = tmp_path / name
    shutil.copytree(TREES / name, dst, symlinks=True)
    return dst


def ctx_for(root: Path | None = None, **cfg: Any) -> DoctorContext:
    return DoctorContext(cfg=load_config(None, **cfg), host=HostRoot(root or Path("/")), timeout=2.0)


def one(ctx: DoctorContext, name: str) -> CheckResult:
    (res,) = run_checks(ctx, [name])
    return res


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------- as a user runs it


@pytest.mark.parametrize("prefer", ["edgetpu", "cpu"])
def test_doctor_here_reports_every_check_and_the_missing_tpu(tmp_path: Path, prefer: str) -> None:
    cfg = write_config(tmp_path / "a.toml", f"""
node_id = "pi-7"
[broker]
url = "mqtt://127.0.0.1:{free_port()}"
[backend]
prefer = "{prefer}"
""")
    code, res = doctor("--config", str(cfg), "--timeout", "1")
    report = res["_report"]
    assert [c["name"] for c in report["checks"]] == NAMES
    for c in report["checks"]:
        assert c["status"] in ("ok", "warn", "fail") and c["detail"], c
        assert (c["fix"] is None) == (c["status"] == "ok"), c
    assert code == (1 if any(c["status"] == "fail" for c in report["checks"]) else 0)
    assert report["ok"] is (code == 0) and report["node_id"] == "pi-7"
    assert res["broker"]["status"] == "fail"  # nothing listens on that port: doctor exits 1 here
    assert res["camera"]["status"] == "warn"  # no [camera] section
    if not enumerate_tpus():
        assert res["tpu"]["status"] == ("fail" if prefer == "edgetpu" else "warn")
        assert "no Edge TPU found" in res["tpu"]["detail"]
    assert res["edgetpu-compat"]["status"] == ("warn" if prefer == "edgetpu" else "ok")


def test_doctor_text_output_and_invalid_config(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "agent.cli", "doctor", "--root", str(TREES / "pi5-usb2"),
                        "--only", "tpu", "--only", "usb-link"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   tpu: 1 Edge TPU(s): usb:0 (ready)" in r.stdout
    assert "warn usb-link: usb:0: 480 Mbit/s" in r.stdout and "     fix: use a USB 3" in r.stdout

    bad = write_config(tmp_path / "bad.toml", "[camera]\nloop = 'perhaps'\n")
    code, res = doctor("--config", str(bad), "--only", "config", "--only", "broker", "--only", "os")
    assert code == 2
    assert res["config"]["status"] == "fail" and "camera.loop" in res["config"]["data"]["error"]
    assert res["broker"]["status"] == "warn" and "config is invalid" in res["broker"]["detail"]
    assert res["os"]["status"] == "ok"


# ------------------------------------------------------------------------------------------- fake trees


def test_usb2_link_is_a_warning_with_the_library_identity(tmp_path: Path) -> None:
    root = tree("pi5-usb2", tmp_path)
    code, res = doctor("--root", str(root), "--only", "tpu", "--only", "usb-link", "--only", "libedgetpu",
                       "--only", "keys", "--only", "groups", "--only", "os")
    assert code == 0  # warnings only
    assert res["tpu"]["status"] == "ok" and res["tpu"]["data"]["devices"][0]["spec"] == "usb:0"
    assert res["usb-link"]["status"] == "warn" and res["usb-link"]["data"]["links"] == {"usb:0": 480.0}
    lib = res["libedgetpu"]["data"]["files"][0]
    assert res["libedgetpu"]["status"] == "ok"
    assert lib["resolved"].endswith("libedgetpu.so.1.0") and lib["package"] == "libedgetpu1-std"
    assert lib["version"] == "16.0" and len(lib["sha256_12"]) == 12
    assert res["keys"]["status"] == "ok" and res["keys"]["data"]["key_ids"] == ["0ca58bd00c9afef4"]
    assert res["groups"]["status"] == "warn" and "not in video" in res["groups"]["detail"]
    assert "Raspberry Pi 5" in res["os"]["detail"]


def test_usb3_and_unprogrammed_links(tmp_path: Path) -> None:
    root = tree("pi5-usb2", tmp_path)
    dev = root / "sys/bus/usb/devices/1-1"
    (dev / "speed").write_text("5000\n")
    assert one(ctx_for(root), "usb-link").status == "ok"
    # Before libedgetpu uploads the firmware the accelerator is 1a6e:089a; its speed is not final yet.
    (dev / "idVendor").write_text("1a6e\n")
    (dev / "idProduct").write_text("089a\n")
    (dev / "speed").write_text("480\n")
    res = one(ctx_for(root), "usb-link")
    assert res.status == "ok" and "before firmware load" in res.detail


def test_pcie_coral_without_the_apex_driver_fails() -> None:
    code, res = doctor("--root", str(TREES / "pcie-no-driver"), "--only", "apex-driver", "--only", "tpu")
    assert code == 1
    assert res["apex-driver"]["status"] == "fail" and "0000:01:00.0" in res["apex-driver"]["detail"]
    assert res["apex-driver"]["data"]["modules"] == {"gasket": False, "apex": False}
    assert res["tpu"]["status"] == "fail"  # prefer = edgetpu by default


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the fake tree's group ids needs root")
def test_apex_node_group_and_udev_rule(tmp_path: Path) -> None:
    root = tree("pcie-apex", tmp_path)
    node = root / "dev" / "apex_0"
    node.chmod(0o660)
    os.chown(node, 0, 994)  # group apex, as gasket-dkms's own rule leaves it
    ctx = ctx_for(root)
    assert one(ctx, "apex-driver").status == "ok" and one(ctx, "tpu").status == "ok"
    res = one(ctx, "apex-permissions")
    assert res.status == "fail" and "group apex" in res.detail and "edge-agent cannot open apex_0" in res.detail
    assert "apex" in one(ctx, "groups").detail
    assert one(ctx, "udev").status == "warn"

    os.chown(node, 0, 46)  # our rule: group plugdev, which the service is in
    (root / "etc/udev/rules.d").mkdir(parents=True)
    shutil.copy(ROOT / "systemd" / "99-edge-agent-coral.rules", root / "etc/udev/rules.d")
    assert one(ctx, "apex-permissions").status == "ok"
    udev = one(ctx, "udev")
    assert udev.status == "ok" and udev.data["shipped"] is True


# ----------------------------------------------------------------------------------------------- keys


def test_keys_that_do_not_parse_or_are_not_a_directory(tmp_path: Path) -> None:
    code, res = doctor("--root", str(TREES / "keys-garbage"), "--only", "keys")
    assert code == 1 and res["keys"]["status"] == "fail" and "fleet.pub" in res["keys"]["detail"]

    (tmp_path / "etc/edge-agent").mkdir(parents=True)
    (tmp_path / "etc/edge-agent/keys").write_text("a file where the directory should be\n")
    res2 = one(ctx_for(tmp_path), "keys")
    assert res2.status == "fail" and "not a directory" in res2.detail
    assert one(ctx_for(tmp_path / "nowhere"), "keys").status == "fail"


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp_path base is 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="doctor-"))
    d.chmod(0o755)
    yield d
    for p in d.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(d)


# Imports happen while still root (this interpreter lives under /root, 0700), then the child drops to nobody.
DROP_AND_RUN = """
import importlib, logging, os, pkgutil, sys, tomllib
import agent, agent.cli
# Everything the run may import lazily, while still root: the checkout itself may be unreadable to uid 65534
# (a clone under a 0700 mktemp -d, as CI makes).
for m in pkgutil.walk_packages(agent.__path__, "agent."):
    if not m.name.endswith(("probe_child", "preflight")):
        importlib.import_module(m.name)
parser = agent.cli.build_parser()
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(agent.cli.dispatch(parser, sys.argv[1:]))
"""


def test_unreadable_keys_dir_fails_for_an_unprivileged_user(world_dir: Path) -> None:
    keys = world_dir / "keys"
    shutil.copytree(TREES / "pi5-usb2/etc/edge-agent/keys", keys)
    keys.chmod(0o000)
    cfg = write_config(world_dir / "a.toml", f'trusted_keys_dir = "{keys}"\n')
    cfg.chmod(0o644)
    args = ["doctor", "--json", "--config", str(cfg), "--only", "keys"]
    # Root reads anything (os.access says yes): a chmod 000 dir only bites an unprivileged process.
    cmd = [sys.executable, "-c", DROP_AND_RUN, *args] if os.geteuid() == 0 else [sys.executable, "-m", "agent.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout, r.stderr
    res = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1, r.stderr
    assert res["keys"]["status"] == "fail" and "not readable by uid" in res["keys"]["detail"]


def test_doctor_as_root_judges_the_service_users_access(tmp_path: Path) -> None:
    root = tree("pi5-usb2", tmp_path)
    keys = root / "etc/edge-agent/keys"
    keys.chmod(0o700)  # owned by whoever runs the test, never by the tree's edge-agent (uid 995)
    res = one(ctx_for(root), "keys")
    assert res.status == "fail" and "edge-agent cannot read keys/" in res.detail
    keys.chmod(0o755)
    assert one(ctx_for(root), "keys").status == "ok"


# ------------------------------------------------------------------------------------- clock, power, disk


def test_unsynchronized_clock_warns_and_fails_under_tls() -> None:
    unsynced = TimexReading(state=TIME_ERROR, status=STA_UNSYNC, maxerror_us=16_000_000, esterror_us=16_000_000)

    def fake_clock() -> Any:
        return clock_status(adjtimex=lambda: unsynced, timedatectl=lambda: "no\n")

    ctx = ctx_for()
    ctx.clock = fake_clock
    res = one(ctx, "clock")
    assert res.status == "warn" and "STA_UNSYNC" in res.detail and "fake-hwclock" in (res.fix or "")
    tls = ctx_for(broker={"url": "mqtts://broker.lan:8883"})
    tls.clock = fake_clock
    assert one(tls, "clock").status == "fail"
    tls.clock = lambda: clock_status(adjtimex=lambda: TimexReading(0, 0x2001, 1000, 10), timedatectl=lambda: "")
    assert one(tls, "clock").status == "ok"


@pytest.mark.parametrize(("fixture", "status"), [
    ("get_throttled-ok.txt", "ok"),
    ("get_throttled-softlimit-past.txt", "warn"),
    ("get_throttled-undervolt.txt", "fail"),
])
def test_power_from_get_throttled(fixture: str, status: str) -> None:
    ctx = ctx_for()
    ctx.runner = lambda argv: (VCGENCMD / fixture).read_text()
    res = one(ctx, "power")
    assert res.status == status and res.detail.startswith("throttled=0x")


def test_power_without_vcgencmd(tmp_path: Path) -> None:
    def missing(argv: list[str]) -> str:
        raise OSError("vcgencmd not found")

    ctx = ctx_for(tmp_path)
    ctx.runner = missing
    assert one(ctx, "power").status == "ok"  # not a Pi
    ctx.host = HostRoot(TREES / "pi5-usb2")
    assert one(ctx, "power").status == "warn"  # a Pi without its firmware tools


def test_disk_needs_two_running_bundles(tmp_path: Path) -> None:
    state = tmp_path / "var/lib/edge-agent"
    store = ModelStore(state / "models")
    store.ensure_dirs()
    store.version_dir(3).mkdir()
    (store.version_dir(3) / "model.tflite").write_bytes(b"\0" * (3 << 20))
    rec = ModelRecord(name="yolo-nas", version=3)
    store.save_state(StoreState(current=rec, committed=[rec]))
    res = one(ctx_for(tmp_path), "disk")
    assert res.status == "ok" and "yolo-nas v3" in res.detail and res.data["need_bytes"] > 6 << 20
    full = one(ctx_for(tmp_path, updates={"min_free_bytes": 1 << 60}), "disk")
    assert full.status == "fail" and full.fix


def test_state_dir_missing_file_and_writable(tmp_path: Path) -> None:
    assert one(ctx_for(tmp_path), "state-dir").status == "warn"
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "var/lib/edge-agent").write_text("")
    assert one(ctx_for(tmp_path), "state-dir").status == "fail"
    (tmp_path / "var/lib/edge-agent").unlink()
    (tmp_path / "var/lib/edge-agent").mkdir()
    assert one(ctx_for(tmp_path), "state-dir").status == "ok"
    assert list((tmp_path / "var/lib/edge-agent").iterdir()) == []  # the probe file is gone


# ------------------------------------------------------------------------------------ camera and broker


def test_camera_configured_missing_and_delivering(tmp_path: Path) -> None:
    assert one(ctx_for(tmp_path), "camera").status == "warn"
    missing = one(ctx_for(tmp_path, camera={"source": "/dev/video7"}), "camera")
    assert missing.status == "fail" and "/dev/video7 does not exist" in missing.detail
    images = tmp_path / "frames"
    images.mkdir()
    cv2.imwrite(str(images / "0001.jpg"), np.full((48, 64, 3), 90, np.uint8))
    res = one(ctx_for(tmp_path, camera={"source": str(images), "realtime": False}), "camera")
    assert res.status == "ok" and res.data == {"width": 64, "height": 48}


def test_broker_probe_never_takes_the_daemons_session(mqtt_broker: Any) -> None:
    daemon_id = "pi-7"
    drops: list[object] = []
    daemon = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=daemon_id, protocol=mqtt.MQTTv5)
    daemon.on_disconnect = lambda *a: drops.append(a)
    daemon.connect(mqtt_broker.host, mqtt_broker.port)
    daemon.loop_start()
    try:
        assert wait_for(daemon.is_connected, 10)
        ctx = ctx_for(node_id="pi-7", broker={"url": mqtt_broker.url, "client_id": daemon_id})
        res = one(ctx, "broker")
        assert res.status == "ok", res
        assert res.data["client_id"].startswith("pi-7-doctor-") and res.data["client_id"] != daemon_id
        assert not wait_for(lambda: drops, 1.0) and daemon.is_connected()
    finally:
        daemon.loop_stop()
        daemon.disconnect()


def test_broker_with_credentials_over_tls(broker_factory: Any, tmp_path: Path) -> None:
    broker = broker_factory(users={"pi-7": "right"}, tls=True)
    url = f"mqtts://127.0.0.1:{broker.tls_port}"
    good = one(ctx_for(broker={"url": url, "username": "pi-7", "password": "right", "ca_file": str(broker.ca_path)}),
               "broker")
    assert good.status == "ok" and "as pi-7, TLS verified" in good.detail
    bad = one(ctx_for(broker={"url": url, "username": "pi-7", "password": "wrong", "ca_file": str(broker.ca_path)}),
              "broker")
    assert bad.status == "fail" and "refused" in bad.detail
    unreadable = one(ctx_for(broker={"url": url, "username": "pi-7", "password_file": str(tmp_path / "none")}),
                     "broker")
    assert unreadable.status == "fail" and "password_file" in (unreadable.fix or "")


# ----------------------------------------------------------------------------------------- the registry


def test_a_crashing_check_is_reported_not_raised_and_the_probe_hook_is_used() -> None:
    def boom(ctx: DoctorContext) -> CheckResult:
        raise RuntimeError("sensor on fire")

    res = run_check(Check("boom", boom), ctx_for())
    assert res.status == "fail" and "sensor on fire" in res.detail and res.fix
    ctx = ctx_for()
    ctx.compat_probe = lambda c: ok("edgetpu-compat", "delegate loaded and invoked in a child process")
    assert one(ctx, "edgetpu-compat").status == "ok"
    assert len(set(NAMES)) == len(NAMES)


# ------------------------------------------------------------------- runtime/libedgetpu compatibility verdict


def test_compat_reports_the_verdict_the_daemon_stored(tmp_path: Path) -> None:
    from agent.doctor.compat import live_probe, stored_verdict
    from agent.inference.backends.probe import LibraryIdentity, ProbeVerdict, VerdictCache, current_runtime

    root = tree("pi5-usb2", tmp_path)  # one USB Coral: usb:0
    lib = tmp_path / "libedgetpu.so.1.0"
    lib.write_bytes(b"stand-in library")
    ctx = ctx_for(root, backend={"detectors": {"edgetpu": {"library": str(lib)}}})
    ctx.compat_probe = stored_verdict
    first = one(ctx, "edgetpu-compat")
    assert first.status == "warn" and "not probed yet" in first.detail and "usb:0" in first.detail

    runtime, version = current_runtime()
    cache = VerdictCache(root / "var/lib/edge-agent")
    base = {"library": str(lib), "identity": LibraryIdentity.of(lib), "runtime": runtime,
            "runtime_version": version, "device": "usb:0", "model": "mobilenet", "probed_at": 1.0}
    cache.put(ProbeVerdict(status="ok", reason="ok", **base))
    res = one(ctx, "edgetpu-compat")
    assert res.status == "ok" and "stored verdict" in res.detail
    cache.put(ProbeVerdict(status="crashed", reason="crashed with SIGSEGV during load_delegate", **base))
    res = one(ctx, "edgetpu-compat")
    assert res.status == "fail" and "SIGSEGV" in res.detail and res.fix

    ctx.compat_probe = live_probe  # a library that is not there: a verdict at once, no child started
    ctx.cfg = load_config(None, backend={"detectors": {"edgetpu": {"library": str(tmp_path / "missing.so")}}})
    res = one(ctx, "edgetpu-compat")
    assert res.status == "fail" and "not found" in res.detail


def test_doctor_imports_no_ml_framework() -> None:
    code = ("import sys, agent.cli\n"
            "agent.cli.main(['doctor', '--json', '--timeout', '0.2', '--only', 'edgetpu-compat', '--only', 'runtime'])\n"
            "bad = [m for m in ('torch', 'tensorflow', 'onnx', 'onnxruntime', 'libreyolo') if m in sys.modules]\n"
            "sys.exit(3 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
