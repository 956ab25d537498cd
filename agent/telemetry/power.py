"""Power draw from the best source present, in order of trust (see docs/TELEMETRY.md):

1. `hwmon:<chip>` — an INA219/INA220/INA226/INA230/INA231/INA260 on I2C, bound to the kernel's ina2xx
   hwmon driver: `power1_input` (µW), else `curr1_input` (mA) × `in1_input` (bus voltage, mV).
2. `vcgencmd_pmic` — Raspberry Pi 5: `vcgencmd pmic_read_adc`, Σ V×I over the PMIC rails that report both.
   (The rails are after the PMIC's regulators: the sum is below the wall draw by the conversion losses.)
3. `power_supply:<name>` — `/sys/class/power_supply/*/power_now` (µW), else current_now (µA) × voltage_now (µV).
4. `estimated` — no sensor: board baseline + Coral duty cycle × the Edge TPU's 2 W maximum. Always labelled
   `estimated: true` so nobody mistakes it for a measurement.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.protocol.telemetry import PowerInfo

log = logging.getLogger(__name__)

HWMON_ROOT = Path("/sys/class/hwmon")
POWER_SUPPLY_ROOT = Path("/sys/class/power_supply")
#: chip names the kernel's ina2xx driver (and ina238 for the newer parts) registers under hwmon
INA_CHIPS = frozenset({"ina219", "ina220", "ina226", "ina230", "ina231", "ina234", "ina260", "ina237", "ina238"})
#: Coral datasheets: the Edge TPU draws up to 2 W (0.5 W per TOPS at 4 TOPS)
CORAL_MAX_W = 2.0
#: idle draw of a Raspberry Pi 4B / 5 with Ethernet up and no HDMI, about 2.7 W (documented estimate)
PI_BASELINE_W = 2.7

Runner = Callable[[list[str]], str]


def run_command(argv: list[str], timeout: float = 3.0) -> str:
    """Run a firmware query (vcgencmd); raise OSError when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        raise OSError(f"{argv[0]} not found")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[:200]}")
    return proc.stdout


class PowerSource(Protocol):
    @property
    def name(self) -> str: ...

    def read(self) -> PowerInfo: ...


def _read_num(path: Path) -> float:
    return float(path.read_text().strip())


# ---------------------------------------------------------------------------------------------- hwmon
@dataclass
class HwmonPower:
    """One INA2xx chip under /sys/class/hwmon/hwmonN (the N changes across boots: matched by `name`)."""

    path: Path
    chip: str

    @property
    def name(self) -> str:
        return f"hwmon:{self.chip}"

    def read(self) -> PowerInfo:
        p = self.path / "power1_input"
        if p.exists():
            watts = _read_num(p) / 1e6  # µW
            detail = {"power_w": round(watts, 4)}
        else:
            ma, mv = _read_num(self.path / "curr1_input"), _read_num(self.path / "in1_input")
            watts = ma * mv / 1e6  # mA × mV = µW
            detail = {"current_a": round(ma / 1000, 4), "bus_v": round(mv / 1000, 4)}
        for f, key, scale in (("in1_input", "bus_v", 1e-3), ("curr1_input", "current_a", 1e-3)):
            fp = self.path / f
            if key not in detail and fp.exists():
                detail[key] = round(_read_num(fp) * scale, 4)
        return PowerInfo(source=self.name, estimated=False, watts=round(watts, 3), detail=detail)


def find_hwmon(root: Path = HWMON_ROOT, chip: str | None = None) -> list[HwmonPower]:
    found = []
    for d in sorted(root.glob("hwmon*")):
        try:
            name = (d / "name").read_text().strip()
        except OSError:
            continue
        if name in INA_CHIPS and (chip is None or name == chip) and (
            (d / "power1_input").exists() or ((d / "curr1_input").exists() and (d / "in1_input").exists())
        ):
            found.append(HwmonPower(d, name))
    return found


# ------------------------------------------------------------------------------------- vcgencmd PMIC
_PMIC_LINE = re.compile(
    r"^\s*(?P<rail>[A-Za-z0-9_]+?)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>-?[\d.]+)(?P<unit>[AV])\s*$"
)


def parse_pmic_read_adc(text: str) -> dict[str, dict[str, float]]:
    """`vcgencmd pmic_read_adc` → {rail: {"A": amps, "V": volts}} (lines like `VDD_CORE_A current(7)=1.2A`)."""
    rails: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if m:
            rails.setdefault(m["rail"], {})[m["kind"]] = float(m["value"])
    if not rails:
        raise ValueError("no rails in pmic_read_adc output")
    return rails


@dataclass
class VcgencmdPmicPower:
    runner: Runner = run_command
    name: str = "vcgencmd_pmic"

    def read(self) -> PowerInfo:
        rails = parse_pmic_read_adc(self.runner(["vcgencmd", "pmic_read_adc"]))
        detail: dict[str, float] = {}
        total = 0.0
        for rail, vals in rails.items():
            if "A" in vals and "V" in vals:
                w = vals["A"] * vals["V"]
                total += w
                detail[f"{rail}_w"] = round(w, 4)
        if "EXT5V" in rails and "V" in rails["EXT5V"]:
            detail["input_v"] = rails["EXT5V"]["V"]
        if not any(k.endswith("_w") for k in detail):
            raise ValueError("pmic_read_adc reported no rail with both current and voltage")
        return PowerInfo(source=self.name, estimated=False, watts=round(total, 3), detail=detail)


# ------------------------------------------------------------------------------------- power_supply
@dataclass
class PowerSupplyPower:
    path: Path

    @property
    def name(self) -> str:
        return f"power_supply:{self.path.name}"

    def read(self) -> PowerInfo:
        p = self.path / "power_now"
        if p.exists():
            watts = _read_num(p) / 1e6  # µW
        else:
            watts = _read_num(self.path / "current_now") * _read_num(self.path / "voltage_now") / 1e12  # µA×µV
        detail: dict[str, float] = {}
        v = self.path / "voltage_now"
        if v.exists():
            detail["voltage_v"] = round(_read_num(v) / 1e6, 4)
        return PowerInfo(source=self.name, estimated=False, watts=round(abs(watts), 3), detail=detail)


def find_power_supplies(root: Path = POWER_SUPPLY_ROOT) -> list[PowerSupplyPower]:
    out = []
    for d in sorted(root.glob("*")):
        if (d / "power_now").exists() or ((d / "current_now").exists() and (d / "voltage_now").exists()):
            out.append(PowerSupplyPower(d))
    return out


# ---------------------------------------------------------------------------------------- estimate
@dataclass
class EstimatedPower:
    """baseline_w + duty × tpu_max_w, where duty is the share of wall time spent in invoke on the TPU."""

    duty_cycle: Callable[[], float]
    on_tpu: Callable[[], bool] = lambda: True
    baseline_w: float = PI_BASELINE_W
    tpu_max_w: float = CORAL_MAX_W
    name: str = "estimated"

    def read(self) -> PowerInfo:
        duty = min(max(self.duty_cycle(), 0.0), 1.0) if self.on_tpu() else 0.0
        watts = self.baseline_w + duty * self.tpu_max_w
        return PowerInfo(
            source=self.name,
            estimated=True,
            watts=round(watts, 3),
            detail={"baseline_w": self.baseline_w, "tpu_duty": round(duty, 4), "tpu_max_w": self.tpu_max_w},
        )


# ------------------------------------------------------------------------------------------ monitor
class PowerMonitor:
    """Picks the most trusted source that reads, once; falls back to the estimate if it later fails."""

    def __init__(self, sources: list[PowerSource], fallback: EstimatedPower) -> None:
        self.fallback = fallback
        self.source: PowerSource = fallback
        for s in sources:
            try:
                s.read()
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                log.debug("power source %s unusable: %s", s.name, exc)
                continue
            self.source = s
            break
        log.info("power source: %s", self.source.name)

    def read(self) -> PowerInfo:
        try:
            return self.source.read()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.warning("power source %s failed (%s); reporting the estimate", self.source.name, exc)
            return self.fallback.read()

    __call__ = read


def build_power_monitor(
    duty_cycle: Callable[[], float],
    on_tpu: Callable[[], bool] = lambda: True,
    *,
    source: str = "auto",
    baseline_w: float = PI_BASELINE_W,
    tpu_max_w: float = CORAL_MAX_W,
    hwmon_root: Path = HWMON_ROOT,
    power_supply_root: Path = POWER_SUPPLY_ROOT,
    runner: Runner = run_command,
) -> PowerMonitor:
    """source: auto | hwmon | vcgencmd | power_supply | estimated (auto = the trust order above)."""
    fallback = EstimatedPower(duty_cycle, on_tpu, baseline_w, tpu_max_w)
    cands: list[PowerSource] = []
    if source in ("auto", "hwmon"):
        cands += find_hwmon(hwmon_root)
    if source in ("auto", "vcgencmd"):
        cands.append(VcgencmdPmicPower(runner))
    if source in ("auto", "power_supply"):
        cands += find_power_supplies(power_supply_root)
    if source not in ("auto", "hwmon", "vcgencmd", "power_supply", "estimated"):
        raise ValueError(f"unknown power source {source!r}")
    return PowerMonitor(cands, fallback)
