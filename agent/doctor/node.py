"""Doctor checks for the node itself: clock, free disk, power (undervoltage/throttling), state directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.doctor.model import CheckResult, DoctorContext, Status, fail, ok, result, warn
from agent.system.host import dir_size, free_bytes, try_write
from agent.telemetry.thermal import parse_get_throttled

#: a bundle when none is installed yet: the measured INT8 (12.5 MB) + FP16 CPU model (~25 MB), rounded up
DEFAULT_BUNDLE_BYTES = 64 << 20
MB = 1 << 20


def check_clock(ctx: DoctorContext) -> CheckResult:
    st = ctx.clock()
    data = {"clock": st.model_dump()}
    if st.synchronized:
        return ok("clock", st.detail, **data)
    fix = ("enable NTP: `sudo timedatectl set-ntp true` (systemd-timesyncd or chrony) and let it reach a "
           "server; a Pi has no RTC and boots at fake-hwclock's last saved time")
    if st.synchronized is None:
        return warn("clock", f"sync state unknown ({st.detail})", fix, **data)
    # TLS certificate validity is judged against this clock: with TLS an unsynced clock breaks the link.
    status = Status.FAIL if ctx.cfg.broker.tls else Status.WARN
    return result("clock", status, f"not synchronized: {st.detail}", fix, **data)


def running_bundle_bytes(ctx: DoctorContext) -> tuple[int | None, str]:
    """Size of the committed model version in the store, else of the configured bundle; None if neither."""
    from agent.updates.store import ModelStore, StoreError

    store = ModelStore(ctx.host.path(ctx.cfg.state_dir) / "models")
    try:
        current = store.load_state().current
    except StoreError:
        current = None
    if current is not None and store.version_dir(current.version).is_dir():
        return dir_size(store.version_dir(current.version)), f"{current.name} v{current.version}"
    if ctx.cfg.bundle is not None and ctx.host.path(ctx.cfg.bundle).is_dir():
        return dir_size(ctx.host.path(ctx.cfg.bundle)), str(ctx.cfg.bundle)
    return None, "no bundle installed"


def check_disk(ctx: DoctorContext) -> CheckResult:
    size, what = running_bundle_bytes(ctx)
    bundle = size if size is not None else DEFAULT_BUNDLE_BYTES
    need = 2 * bundle + ctx.cfg.updates.min_free_bytes
    measured, free = free_bytes(ctx.host.path(ctx.cfg.state_dir))
    basis = f"2 x {bundle / MB:.1f} MB ({what if size is not None else 'default estimate'}) + reserve"
    data = {"free_bytes": free, "need_bytes": need, "measured_at": str(measured)}
    detail = f"{free / MB:.0f} MB free at {measured}, need {need / MB:.0f} MB = {basis}"
    if free < need:
        return fail("disk", detail, f"free space on the filesystem of {ctx.cfg.state_dir} "
                    "(journalctl --vacuum-size=100M, apt clean) or use a larger SD card", **data)
    return ok("disk", detail, **data)


def _is_raspberry_pi(ctx: DoctorContext) -> bool:
    model = ctx.host.read("/sys/firmware/devicetree/base/model") or ctx.host.read("/proc/device-tree/model") or ""
    return "raspberry pi" in model.lower()


def check_power(ctx: DoctorContext) -> CheckResult:
    try:
        t = parse_get_throttled(ctx.runner(["vcgencmd", "get_throttled"]))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        if _is_raspberry_pi(ctx):
            return warn("power", f"vcgencmd get_throttled unavailable on this Pi: {exc}",
                        "install the firmware tools (raspi-utils / libraspberrypi-bin) and add the user to video")
        return ok("power", "not a Raspberry Pi: no firmware throttling flags to read")
    data = t.model_dump()
    raw = f"throttled=0x{t.raw:x}"
    fix = "use the official 5 V power supply (5 A on a Pi 5 with a Coral) and a short, thick cable"
    if t.under_voltage:
        return fail("power", f"{raw}: under-voltage NOW", fix, **data)
    if t.freq_capped or t.throttled:
        return warn("power", f"{raw}: CPU frequency capped or throttled now", "improve cooling (heatsink, fan) "
                    "and check the supply", **data)
    if t.under_voltage_occurred or t.throttled_occurred or t.freq_capped_occurred:
        return warn("power", f"{raw}: under-voltage or throttling occurred since boot", fix, **data)
    if t.soft_temp_limit or t.soft_temp_limit_occurred:
        return warn("power", f"{raw}: soft temperature limit reached", "improve cooling (heatsink, fan)", **data)
    return ok("power", f"{raw}: no under-voltage or throttling since boot", **data)


def check_state_dir(ctx: DoctorContext) -> CheckResult:
    from agent.updates.store import describe_os_error

    d = ctx.cfg.state_dir
    where = ctx.host.path(d)
    if not where.exists():
        return warn("state-dir", f"{d} does not exist yet",
                    f"the unit's StateDirectory= creates it; by hand: sudo install -d -o edge-agent -m 0750 {d}")
    if not where.is_dir():
        return fail("state-dir", f"{d} is not a directory", f"remove it and let StateDirectory= create {d}")
    try:
        try_write(where)
    except OSError as exc:
        return fail("state-dir", describe_os_error(exc, f"writing a test file in {d}"),
                    f"sudo chown edge-agent {d}; if the filesystem went read-only, check the SD card (dmesg)")
    return ok("state-dir", f"{d} is writable", path=str(Path(d)))
