"""The hardened unit: systemd-analyze verify (no warnings) and security exposure ≤ 3.0; udev rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edge-agent.service"
RULES = ROOT / "systemd" / "99-edge-agent-coral.rules"
INSTALLED_EXEC = "/opt/edge-agent/venv/bin/edge-agent"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


def _unit_here(tmp_path: Path) -> Path:
    """The unit as shipped, but with ExecStart pointing at this checkout's edge-agent (verify checks it exists)."""
    exe = Path(sys.executable).parent / "edge-agent"
    if not exe.exists():
        exe = Path(shutil.which("edge-agent") or "/bin/true")
    text = UNIT.read_text()
    assert INSTALLED_EXEC in text
    out = tmp_path / "edge-agent.service"
    out.write_text(text.replace(INSTALLED_EXEC, str(exe)))
    return out


@needs_analyze
def test_systemd_analyze_verify_clean(tmp_path: Path) -> None:
    unit = _unit_here(tmp_path)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", f"systemd-analyze verify warned:\n{proc.stderr}"


@needs_analyze
def test_security_exposure_at_most_3(tmp_path: Path) -> None:
    unit = _unit_here(tmp_path)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, out[-2000:]
    exposure = float(m[1])
    print(f"\nsystemd-analyze security --offline=true: exposure {exposure}")
    assert exposure <= 3.0, out


def _directives(text: str) -> dict[str, list[str]]:
    d: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, _, v = line.partition("=")
            d.setdefault(k, []).append(v)
    return d


def test_unit_contract() -> None:
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["always"]
    assert d["ProtectSystem"] == ["strict"] and d["StateDirectory"] == ["edge-agent"]
    assert d["DevicePolicy"] == ["closed"]
    allowed = " ".join(d["DeviceAllow"])
    assert "/dev/apex_0" in allowed and "char-usb_device" in allowed
    assert d["User"] == ["edge-agent"] or d.get("DynamicUser") == ["yes"]
    assert d["ExecStart"][0].startswith(INSTALLED_EXEC + " run --config ")


def test_udev_rules_cover_both_usb_ids_and_pcie() -> None:
    text = RULES.read_text()
    rules = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    ids = {(m[1], m[2]) for ln in rules for m in
           [re.search(r'ATTRS\{idVendor\}=="(\w+)".*ATTRS\{idProduct\}=="(\w+)"', ln)] if m}
    assert ids == {("1a6e", "089a"), ("18d1", "9302")}
    assert any('SUBSYSTEM=="apex"' in ln for ln in rules)
    for ln in rules:
        assert 'MODE="0660"' in ln and 'GROUP="plugdev"' in ln
        # every key is KEY=="v", KEY="v" or KEY+="v": catches a typo udev would only log at boot
        for part in ln.split(", "):
            assert re.fullmatch(r'[A-Z_]+(\{\w+\})?(==|=|\+=)"[^"]*"', part.strip()), part
