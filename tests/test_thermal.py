"""Temperature and throttle parsers against real kernel/firmware formats (sources: tests/data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.telemetry.thermal import (
    ThermalMonitor,
    parse_apex_temp,
    parse_get_throttled,
    read_apex_temps,
    read_cpu_temp,
)

DATA = Path(__file__).parent / "data"
SYSFS = DATA / "sysfs"


def test_cpu_thermal_zone_pi5() -> None:
    assert read_cpu_temp(SYSFS / "thermal-pi5") == pytest.approx(47.236)


def test_cpu_zone_preferred_over_acpi() -> None:
    assert read_cpu_temp(SYSFS / "thermal-x86") == pytest.approx(61.0)


def test_no_thermal_zone() -> None:
    assert read_cpu_temp(SYSFS / "nothing") is None


def test_apex_temp_and_dead_sensor_sentinel() -> None:
    # the sentinel is what the driver prints for ADC 0x3FF: (662 - 1023) * 250 + 550
    assert (662 - 0x3FF) * 250 + 550 == -89700
    assert parse_apex_temp("-89700\n") is None
    assert parse_apex_temp("42300\n") == pytest.approx(42.3)
    assert read_apex_temps(SYSFS / "apex") == {"apex_0": pytest.approx(42.3)}


@pytest.mark.parametrize(
    ("fname", "raw", "now", "past"),
    [
        ("get_throttled-ok.txt", 0, set(), set()),
        ("get_throttled-undervolt.txt", 0x50005, {"under_voltage", "throttled"},
         {"under_voltage_occurred", "throttled_occurred"}),
        ("get_throttled-softlimit-past.txt", 0x80000, set(), {"soft_temp_limit_occurred"}),
    ],
)
def test_get_throttled_bits(fname: str, raw: int, now: set[str], past: set[str]) -> None:
    t = parse_get_throttled((DATA / "vcgencmd" / fname).read_text())
    assert t.raw == raw
    flags = {k for k, v in t.model_dump().items() if v is True}
    assert flags == now | past


def test_get_throttled_garbage() -> None:
    with pytest.raises(ValueError):
        parse_get_throttled('error=1 error_msg="Command not registered"')


def test_monitor_combines_sources_and_stops_asking_missing_vcgencmd() -> None:
    calls: list[list[str]] = []

    def runner(argv: list[str]) -> str:
        calls.append(argv)
        raise OSError("vcgencmd not found")

    m = ThermalMonitor(SYSFS / "thermal-pi5", SYSFS / "apex", runner)
    t = m.temperatures()
    assert t.cpu_c == pytest.approx(47.236) and t.tpu_c == {"apex_0": pytest.approx(42.3)}
    assert t.tpu_max_c == pytest.approx(42.3)
    assert m.throttle() is None and m.throttle() is None
    assert len(calls) == 1

    ok = ThermalMonitor(SYSFS / "thermal-pi5", SYSFS / "apex",
                        lambda argv: (DATA / "vcgencmd" / "get_throttled-undervolt.txt").read_text())
    th = ok.throttle()
    assert th is not None and th.under_voltage
