"""Structured logging to systemd-journald over its native socket protocol (no systemd-python needed).

Under systemd (JOURNAL_STREAM set, the journal socket present) each log record becomes one journal entry
with MESSAGE, PRIORITY, CODE_FILE/LINE/FUNC, LOGGER, THREAD_NAME, the node's static fields (NODE_ID, …)
and any `extra={"journal": {"KEY": value}}` the caller adds — so `journalctl -u edge-agent NODE_ID=cam-7
PRIORITY=4` works. Elsewhere logging goes to stderr as usual.

Native protocol (systemd.journal-fields(7), "Native Journal Protocol"): one datagram of `KEY=value\n` lines;
a value containing a newline is sent as `KEY\n` + 64-bit little-endian length + value + `\n`.
Why not systemd-python: a C extension built against libsystemd (PyPI ships source only) for what is one
datagram here; tests/test_journal.py decodes what this sends with the journal's own parsing rules.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
import traceback
from collections.abc import Mapping
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_KEY = re.compile(r"[^A-Z0-9_]")
#: logging level → syslog priority
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def journal_key(name: str) -> str:
    """Journal field names are [A-Z0-9_], must not start with '_' or a digit."""
    key = _KEY.sub("_", name.upper()).lstrip("_")
    return key if key and not key[0].isdigit() else f"X_{key}"


def encode_fields(fields: Mapping[str, Any]) -> bytes:
    out = bytearray()
    for k, v in fields.items():
        if v is None:
            continue
        key = journal_key(k).encode()
        val = v if isinstance(v, bytes) else str(v).encode("utf-8", "replace")
        if b"\n" in val:
            out += key + b"\n" + struct.pack("<Q", len(val)) + val + b"\n"
        else:
            out += key + b"=" + val + b"\n"
    return bytes(out)


def _priority(levelno: int) -> int:
    for lvl in sorted(_PRIORITY, reverse=True):
        if levelno >= lvl:
            return _PRIORITY[lvl]
    return 7


class JournalHandler(logging.Handler):
    def __init__(self, identifier: str = "edge-agent", static: Mapping[str, Any] | None = None,
                 address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.static = dict(static or {})
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def set_fields(self, **fields: Any) -> None:
        """Add or change the node's static fields (e.g. MODEL_VERSION after an update)."""
        self.static.update({journal_key(k): v for k, v in fields.items()})

    def record_fields(self, record: logging.LogRecord) -> dict[str, Any]:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        fields: dict[str, Any] = {
            "MESSAGE": msg,
            "PRIORITY": _priority(record.levelno),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
            "THREAD_NAME": record.threadName,
        }
        fields.update(self.static)
        extra = getattr(record, "journal", None)
        if isinstance(extra, Mapping):
            fields.update({journal_key(k): v for k, v in extra.items()})
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode_fields(self.record_fields(record))
            self.sock.sendto(data, self.address)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def journal_available(address: str = JOURNAL_SOCKET) -> bool:
    """True when started by systemd with output to the journal and its socket is reachable."""
    return bool(os.environ.get("JOURNAL_STREAM")) and os.path.exists(address)


def setup_logging(level: str | int = "INFO", static: Mapping[str, Any] | None = None,
                  address: str = JOURNAL_SOCKET, force_journal: bool = False) -> logging.Handler:
    """Root logging to the journal when available (structured), else to stderr; returns the handler."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if force_journal or journal_available(address):
        handler = JournalHandler(static={journal_key(k): v for k, v in (static or {}).items()}, address=address)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
