"""Power sources against sysfs trees and vcgencmd output in the real formats (sources: tests/data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.telemetry.power import (
    EstimatedPower,
    HwmonPower,
    VcgencmdPmicPower,
    build_power_monitor,
    find_hwmon,
    find_power_supplies,
    parse_pmic_read_adc,
)

DATA = Path(__file__).parent / "data"
SYSFS = DATA / "sysfs"


def _runner(files: dict[str, str]):
    def run(argv: list[str]) -> str:
        key = argv[1]
        if key not in files:
            raise OSError(f"vcgencmd {key}: not available")
        return (DATA / "vcgencmd" / files[key]).read_text()

    return run


def test_hwmon_ina219_reads_power1_input_in_microwatts() -> None:
    found = find_hwmon(SYSFS / "hwmon-ina219")
    assert [h.chip for h in found] == ["ina219"]  # cpu_thermal / rpi_volt ignored
    p = found[0].read()
    assert p.source == "hwmon:ina219" and not p.estimated
    assert p.watts == pytest.approx(3.18)
    assert p.detail["bus_v"] == pytest.approx(5.08) and p.detail["current_a"] == pytest.approx(0.626)


def test_hwmon_without_power1_uses_current_times_bus_voltage() -> None:
    (h,) = find_hwmon(SYSFS / "hwmon-ina226-no-power")
    assert h.read().watts == pytest.approx(0.415 * 12.02, abs=1e-3)


def test_hwmon_absent() -> None:
    assert find_hwmon(SYSFS / "hwmon-none") == []
    assert find_hwmon(SYSFS / "does-not-exist") == []


def test_pmic_read_adc_parse_and_sum_of_rails() -> None:
    text = (DATA / "vcgencmd" / "pmic_read_adc-pi5.txt").read_text()
    rails = parse_pmic_read_adc(text)
    assert len(rails) == 14
    assert rails["VDD_CORE"] == {"A": pytest.approx(0.7434), "V": pytest.approx(0.720637)}
    assert rails["EXT5V"] == {"V": pytest.approx(5.1552)}  # voltage only
    expected = sum(r["A"] * r["V"] for r in rails.values() if "A" in r and "V" in r)
    p = VcgencmdPmicPower(_runner({"pmic_read_adc": "pmic_read_adc-pi5.txt"})).read()
    assert p.source == "vcgencmd_pmic" and not p.estimated
    assert p.watts == pytest.approx(expected, abs=1e-3)
    assert p.watts is not None and 1.0 < p.watts < 2.0
    assert p.detail["input_v"] == pytest.approx(5.1552)


def test_pmic_read_adc_unsupported_firmware_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_pmic_read_adc((DATA / "vcgencmd" / "pmic_read_adc-unsupported.txt").read_text())


def test_power_supply_power_now_and_current_voltage() -> None:
    (a,) = find_power_supplies(SYSFS / "power_supply-power_now")
    assert a.read().watts == pytest.approx(6.482) and a.read().source == "power_supply:BAT0"
    (b,) = find_power_supplies(SYSFS / "power_supply-current_voltage")
    assert b.read().watts == pytest.approx(0.91 * 5.125, abs=1e-3)


def test_estimate_is_labelled_and_follows_duty_cycle() -> None:
    e = EstimatedPower(duty_cycle=lambda: 0.25, baseline_w=2.7, tpu_max_w=2.0)
    p = e.read()
    assert p.estimated and p.source == "estimated"
    assert p.watts == pytest.approx(2.7 + 0.5)
    assert EstimatedPower(lambda: 0.25, on_tpu=lambda: False).read().watts == pytest.approx(2.7)


@pytest.mark.parametrize(
    ("hwmon", "vc", "ps", "expected"),
    [
        ("hwmon-ina219", {"pmic_read_adc": "pmic_read_adc-pi5.txt"}, "power_supply-power_now", "hwmon:ina219"),
        ("hwmon-none", {"pmic_read_adc": "pmic_read_adc-pi5.txt"}, "power_supply-power_now", "vcgencmd_pmic"),
        ("hwmon-none", {}, "power_supply-power_now", "power_supply:BAT0"),
        ("hwmon-none", {"pmic_read_adc": "pmic_read_adc-unsupported.txt"}, "nothing", "estimated"),
    ],
)
def test_trust_order(hwmon: str, vc: dict[str, str], ps: str, expected: str) -> None:
    mon = build_power_monitor(lambda: 0.1, hwmon_root=SYSFS / hwmon, power_supply_root=SYSFS / ps,
                              runner=_runner(vc))
    r = mon.read()
    assert r.source == expected
    assert r.estimated == (expected == "estimated")


def test_source_failing_later_falls_back_to_labelled_estimate(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "hwmon"
    shutil.copytree(SYSFS / "hwmon-ina219", root)
    mon = build_power_monitor(lambda: 0.0, source="hwmon", hwmon_root=root)
    assert isinstance(mon.source, HwmonPower)
    shutil.rmtree(root / "hwmon2")  # the HAT fell off the bus
    r = mon.read()
    assert r.estimated and r.source == "estimated"


def test_energy_per_inference_from_power_and_rate() -> None:
    from agent.telemetry.collector import TelemetryCollector

    mon = build_power_monitor(lambda: 0.0, source="hwmon", hwmon_root=SYSFS / "hwmon-ina219")
    c = TelemetryCollector("n1", "0.1.0", power=mon)
    for _ in range(50):
        c.record_frame({"invoke": 0.01})
    import time

    time.sleep(0.2)  # a window of realistic length: ~250 inferences/s
    t = c.snapshot()
    assert t.power is not None and t.rates.inference_fps > 0
    assert t.power.energy_per_inference_mj == pytest.approx(3.18 / t.rates.inference_fps * 1000, rel=0.01)
