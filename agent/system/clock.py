"""Is the system clock synchronized? Shared by `edge-agent doctor` and the update-security checks.

A Raspberry Pi has no battery-backed RTC: it boots at the time fake-hwclock saved at the last shutdown
and is wrong until NTP answers. TLS certificate validity and signature timestamps need the real time.

Sources, in order:
1. adjtimex(2) with modes = 0 (read-only, no privilege needed). The kernel keeps STA_UNSYNC (0x0040) set
   in `status` until an NTP daemon (systemd-timesyncd, chrony, ntpd) disciplines the clock, and the call
   returns TIME_ERROR (5) while unsynchronized (man 2 adjtimex; include/uapi/linux/timex.h).
   Under the shipped unit's SystemCallFilter=~@clock the call fails with EPERM, hence:
2. `timedatectl show -p NTPSynchronized --value` ("yes"/"no"; timedated asks the kernel the same thing
   over D-Bus, which the daemon may use).
3. Neither: synchronized = None (unknown).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> as glibc's `adjtimex` symbol takes it: `long` fields and a `long`
    timeval (on 32-bit ARM the plain symbol is the 32-bit-time ABI, so c_long matches it too), then
    eleven reserved ints."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class TimexReading:
    """What adjtimex returned: the clock state (0 TIME_OK .. 5 TIME_ERROR) and the fields we use."""

    state: int
    status: int
    maxerror_us: int
    esterror_us: int


class ClockStatus(BaseModel):
    synchronized: bool | None
    source: Literal["adjtimex", "timedatectl", "none"]
    detail: str
    maxerror_us: int | None = None
    esterror_us: int | None = None


TimexSource = Callable[[], TimexReading]
TimedatectlSource = Callable[[], str]


def read_adjtimex() -> TimexReading:
    """adjtimex(2) through libc, modes = 0; OSError when the call is refused or libc has no such symbol."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(libc, "adjtimex", None)
    if fn is None:
        raise OSError("libc has no adjtimex")
    tx = Timex()
    state = int(fn(ctypes.byref(tx)))
    if state == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return TimexReading(state=state, status=tx.status, maxerror_us=tx.maxerror, esterror_us=tx.esterror)


def read_timedatectl(timeout: float = 3.0) -> str:
    """`timedatectl show -p NTPSynchronized --value` → "yes"/"no"; OSError when unavailable."""
    if shutil.which("timedatectl") is None:
        raise OSError("timedatectl not found")
    try:
        proc = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.SubprocessError as exc:
        raise OSError(f"timedatectl: {exc}") from exc
    if proc.returncode != 0:
        raise OSError(f"timedatectl failed: {proc.stderr.strip()[:160]}")
    return proc.stdout


def from_timex(r: TimexReading) -> ClockStatus:
    unsync = r.state == TIME_ERROR or bool(r.status & STA_UNSYNC)
    why = "STA_UNSYNC set" if r.status & STA_UNSYNC else f"clock state {r.state} (TIME_ERROR)"
    detail = (f"kernel: unsynchronized ({why}), max error {r.maxerror_us / 1e6:.1f} s" if unsync
              else f"kernel: synchronized, estimated error {r.esterror_us / 1e3:.1f} ms")
    return ClockStatus(synchronized=not unsync, source="adjtimex", detail=detail,
                       maxerror_us=r.maxerror_us, esterror_us=r.esterror_us)


def clock_status(adjtimex: TimexSource = read_adjtimex,
                 timedatectl: TimedatectlSource = read_timedatectl) -> ClockStatus:
    """The clock's sync state from the kernel, else timedated; `synchronized` None when neither answers."""
    errors = []
    try:
        return from_timex(adjtimex())
    except OSError as exc:
        errors.append(f"adjtimex: {exc}")
    try:
        value = timedatectl().strip().lower()
    except OSError as exc:
        errors.append(str(exc))
    else:
        if value in ("yes", "no"):
            return ClockStatus(synchronized=value == "yes", source="timedatectl",
                               detail=f"timedatectl NTPSynchronized={value}")
        errors.append(f"timedatectl said {value[:40]!r}")
    return ClockStatus(synchronized=None, source="none", detail="; ".join(errors))
