"""Temperatures and throttling: CPU thermal zone, Coral PCIe (apex) sensors, `vcgencmd get_throttled`.

Formats (see tests/data/README.md for sources):
- /sys/class/thermal/thermal_zoneN/temp: milli-°C as a decimal integer; `type` names the zone.
- /sys/class/apex/apex_N/temp: milli-°C, printed "%i" by the gasket/apex driver from a 10-bit ADC as
  (662 - adc) * 250 + 550. A dead or unclocked sensor reads adc 0x3FF → -89700, i.e. -89.7 °C: discarded.
- `vcgencmd get_throttled` → "throttled=0x50005": bits 0-3 now (under-voltage, ARM frequency capped,
  throttled, soft temperature limit), bits 16-19 the same "has occurred since boot".
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.protocol.telemetry import Temperatures, ThrottleInfo
from agent.telemetry.power import Runner, run_command

log = logging.getLogger(__name__)

THERMAL_ROOT = Path("/sys/class/thermal")
APEX_ROOT = Path("/sys/class/apex")
#: the driver's reading for ADC 0x3FF: (662 - 1023) * 250 + 550
APEX_SENTINEL_MILLIC = -89700
#: zone types that are the SoC/CPU on Raspberry Pi (cpu-thermal), other ARM boards and x86
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "soc_thermal", "x86_pkg_temp", "cpu0-thermal")


def read_cpu_temp(root: Path = THERMAL_ROOT) -> float | None:
    zones = sorted(root.glob("thermal_zone*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    typed: list[tuple[str, Path]] = []
    for z in zones:
        try:
            typed.append(((z / "type").read_text().strip(), z))
        except OSError:
            continue
    order = [z for t in CPU_ZONE_TYPES for (tt, z) in typed if tt == t] + [z for _, z in typed]
    for z in order:
        try:
            return round(int((z / "temp").read_text().strip()) / 1000.0, 3)
        except (OSError, ValueError):
            continue
    return None


def parse_apex_temp(text: str) -> float | None:
    """milli-°C → °C; None for the −89.7 °C sentinel or anything outside a silicon-plausible range."""
    milli = int(text.strip())
    if milli == APEX_SENTINEL_MILLIC or not (-40_000 <= milli <= 150_000):
        return None
    return round(milli / 1000.0, 3)


def read_apex_temps(root: Path = APEX_ROOT) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in sorted(root.glob("apex_*")):
        try:
            t = parse_apex_temp((d / "temp").read_text())
        except (OSError, ValueError):
            continue
        if t is None:
            log.debug("%s reports the dead-sensor sentinel; ignored", d.name)
            continue
        out[d.name] = t
    return out


_THROTTLED = re.compile(r"throttled=(0x[0-9a-fA-F]+|\d+)")


def parse_get_throttled(text: str) -> ThrottleInfo:
    m = _THROTTLED.search(text)
    if not m:
        raise ValueError(f"unexpected get_throttled output: {text.strip()[:80]!r}")
    v = int(m[1], 0)

    def bit(n: int) -> bool:
        return bool(v >> n & 1)

    return ThrottleInfo(
        raw=v,
        under_voltage=bit(0),
        freq_capped=bit(1),
        throttled=bit(2),
        soft_temp_limit=bit(3),
        under_voltage_occurred=bit(16),
        freq_capped_occurred=bit(17),
        throttled_occurred=bit(18),
        soft_temp_limit_occurred=bit(19),
    )


@dataclass
class ThermalMonitor:
    thermal_root: Path = THERMAL_ROOT
    apex_root: Path = APEX_ROOT
    runner: Runner = run_command
    #: set False after vcgencmd fails once (not a Pi, or no /dev/vcio in the sandbox): don't retry forever
    vcgencmd_ok: bool = True

    def temperatures(self) -> Temperatures:
        tpu = read_apex_temps(self.apex_root)
        return Temperatures(cpu_c=read_cpu_temp(self.thermal_root), tpu_c=tpu,
                            tpu_max_c=max(tpu.values()) if tpu else None)

    def throttle(self) -> ThrottleInfo | None:
        if not self.vcgencmd_ok:
            return None
        try:
            return parse_get_throttled(self.runner(["vcgencmd", "get_throttled"]))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.info("throttle state unavailable: %s", exc)
            self.vcgencmd_ok = False
            return None
