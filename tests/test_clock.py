"""agent.system.clock: the clock-sync detector shared by doctor and the update checks."""

from __future__ import annotations

import ctypes
import platform

import pytest

from agent.system.clock import (
    STA_UNSYNC,
    TIME_ERROR,
    Timex,
    TimexReading,
    clock_status,
    read_adjtimex,
)

SYNCED = TimexReading(state=0, status=0x2001, maxerror_us=250_000, esterror_us=1_200)  # STA_PLL | STA_NANO
UNSYNCED = TimexReading(state=TIME_ERROR, status=STA_UNSYNC | 0x2000, maxerror_us=16_000_000, esterror_us=16_000_000)


def no_timedatectl() -> str:
    raise OSError("timedatectl not found")


def refused() -> TimexReading:
    raise PermissionError(1, "adjtimex: Operation not permitted")  # the unit's SystemCallFilter=~@clock


def test_kernel_synchronized() -> None:
    st = clock_status(adjtimex=lambda: SYNCED, timedatectl=no_timedatectl)
    assert st.synchronized is True and st.source == "adjtimex"
    assert st.esterror_us == 1_200 and "synchronized" in st.detail


def test_kernel_unsynchronized_by_status_bit_and_by_return_value() -> None:
    st = clock_status(adjtimex=lambda: UNSYNCED, timedatectl=no_timedatectl)
    assert st.synchronized is False and "STA_UNSYNC" in st.detail and st.maxerror_us == 16_000_000
    # TIME_ERROR alone (e.g. a PPS fault) also means "do not trust the time"
    only_state = TimexReading(state=TIME_ERROR, status=0, maxerror_us=0, esterror_us=0)
    assert clock_status(adjtimex=lambda: only_state, timedatectl=no_timedatectl).synchronized is False
    # STA_UNSYNC with TIME_OK (a leap-second state cleared) still counts as unsynchronized
    only_bit = TimexReading(state=0, status=STA_UNSYNC, maxerror_us=0, esterror_us=0)
    assert clock_status(adjtimex=lambda: only_bit, timedatectl=no_timedatectl).synchronized is False


@pytest.mark.parametrize(("answer", "expect"), [("yes\n", True), ("no\n", False)])
def test_falls_back_to_timedatectl_when_adjtimex_is_refused(answer: str, expect: bool) -> None:
    st = clock_status(adjtimex=refused, timedatectl=lambda: answer)
    assert st.synchronized is expect and st.source == "timedatectl"


def test_unknown_when_nothing_answers() -> None:
    st = clock_status(adjtimex=refused, timedatectl=no_timedatectl)
    assert st.synchronized is None and st.source == "none"
    assert "Operation not permitted" in st.detail and "timedatectl not found" in st.detail
    odd = clock_status(adjtimex=refused, timedatectl=lambda: "maybe")
    assert odd.synchronized is None and "maybe" in odd.detail


@pytest.mark.skipif(platform.system() != "Linux", reason="adjtimex(2) is Linux's")
def test_real_adjtimex_reads_this_host() -> None:
    # glibc's struct timex: 208 bytes on LP64 (x86_64, aarch64)
    if ctypes.sizeof(ctypes.c_long) == 8:
        assert ctypes.sizeof(Timex) == 208
    r = read_adjtimex()
    assert 0 <= r.state <= TIME_ERROR
    st = clock_status()
    assert st.source == "adjtimex"  # readable without privilege outside the service's seccomp filter
    assert st.synchronized is (r.state != TIME_ERROR and not r.status & STA_UNSYNC)
