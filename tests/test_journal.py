"""Structured journald logging over the native protocol, received on a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import pytest

from agent.service.journal import JournalHandler, encode_fields, journal_available, journal_key, setup_logging


def decode(data: bytes) -> dict[str, str]:
    """The journal's parser for the native protocol (systemd.journal-fields(7))."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, _, v = line.partition(b"=")
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            out[line.decode()] = data[nl + 9:nl + 9 + n].decode()
            assert data[nl + 9 + n:nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return out


def test_keys_and_binary_safe_multiline() -> None:
    assert journal_key("model.version") == "MODEL_VERSION" and journal_key("_x") == "X" and journal_key("1a") == "X_1A"
    d = decode(encode_fields({"MESSAGE": "two\nlines", "N": 3, "SKIP": None}))
    assert d == {"MESSAGE": "two\nlines", "N": "3"}


def test_records_arrive_structured(tmp_path: Path) -> None:
    addr = str(tmp_path / "journal.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(addr)
    rx.settimeout(2)
    h = JournalHandler(static={"NODE_ID": "cam-7"}, address=addr)
    log = logging.getLogger("agent.test_journal")
    log.addHandler(h)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        log.warning("camera %s lost", "rtsp://x", extra={"journal": {"camera_state": "reconnecting"}})
        d = decode(rx.recv(65536))
        assert d["MESSAGE"] == "camera rtsp://x lost" and d["PRIORITY"] == "4"
        assert d["NODE_ID"] == "cam-7" and d["CAMERA_STATE"] == "reconnecting"
        assert d["SYSLOG_IDENTIFIER"] == "edge-agent" and d["LOGGER"] == "agent.test_journal"
        assert d["CODE_FUNC"] == "test_records_arrive_structured" and int(d["CODE_LINE"]) > 0
        h.set_fields(model_version=4)
        try:
            raise ValueError("bad tensor")
        except ValueError:
            log.exception("invoke failed")
        d = decode(rx.recv(65536))
        assert d["PRIORITY"] == "3" and d["MODEL_VERSION"] == "4"
        assert d["MESSAGE"].startswith("invoke failed\nTraceback") and "ValueError: bad tensor" in d["MESSAGE"]
    finally:
        log.removeHandler(h)
        h.close()
        rx.close()


def test_setup_picks_journal_only_under_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    addr = tmp_path / "journal.sock"
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not journal_available(str(addr))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert isinstance(setup_logging("INFO", address=str(addr)), logging.StreamHandler)
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(str(addr))
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
        h = setup_logging("INFO", {"node_id": "n1"}, address=str(addr))
        assert isinstance(h, JournalHandler) and h.static == {"NODE_ID": "n1"}
        h.close()
        rx.close()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
