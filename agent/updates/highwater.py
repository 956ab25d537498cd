"""Copies of the update state that survive the loss of state.json: the high-water counter and commit marks.

Rollback protection (TUF's rule: never accept a version at or below one already seen) must not depend on
one file. The high-water mark is kept in three places and the effective mark is the largest readable one:

    state.json          StoreState.high_water
    highwater           this module's counter file: the number and its sha256, written atomically
    versions/<n>/       the highest version on disk whose bundle verifies (it was seen, so it counts)

A missing or corrupt copy never lowers the mark; the store rewrites it from the others.

A commit mark (`versions/<n>/.committed`) records that a version passed its trial, so a node that lost
state.json still runs only a committed version (Mender's rule) when it rebuilds its state from disk.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from agent.atomic import atomic_write

log = logging.getLogger(__name__)

HIGHWATER_NAME = "highwater"
COMMIT_MARK = ".committed"
_MAGIC = "edge-fleet-highwater 1"


def _digest(value: int) -> str:
    return hashlib.sha256(f"{_MAGIC}:{value}".encode()).hexdigest()


def encode_counter(value: int) -> bytes:
    return f"{_MAGIC}\n{int(value)}\n{_digest(int(value))}\n".encode()


def decode_counter(data: bytes) -> int | None:
    """The counter's value, or None when the bytes are not a whole, intact counter file."""
    try:
        magic, value, digest = data.decode("ascii").split("\n")[:3]
        n = int(value)
    except (UnicodeDecodeError, ValueError):
        return None
    if magic != _MAGIC or n < 0 or digest != _digest(n):
        return None
    return n


class HighWaterCounter:
    """The fsynced counter file beside state.json. Reads never raise: an unreadable copy is just absent."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / HIGHWATER_NAME
        self._known: int | None = None  # the value last read or written (saves a write per state save)

    def read(self) -> int | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._known = None
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return None
        value = decode_counter(data)
        if value is None:
            log.warning("%s is corrupt: ignored (the mark is taken from the other copies)", self.path)
        self._known = value
        return value

    def raise_to(self, value: int) -> None:
        """Make the file hold at least `value` (atomic write + fsync). Never lowers it. Raises OSError."""
        current = self._known if self._known is not None else self.read()
        if current is not None and current >= value:
            return
        atomic_write(self.path, encode_counter(value))
        self._known = value


def is_marked(version_dir: Path) -> bool:
    return (Path(version_dir) / COMMIT_MARK).is_file()


def mark_committed(version_dir: Path, name: str, version: int) -> bool:
    """Write the commit mark of an installed version (atomic, fsynced). Returns False when the dir is gone."""
    d = Path(version_dir)
    if not d.is_dir() or is_marked(d):
        return False
    atomic_write(d / COMMIT_MARK, f"{name} {int(version)}\n".encode())
    return True


__all__ = ["COMMIT_MARK", "HIGHWATER_NAME", "HighWaterCounter", "decode_counter", "encode_counter",
           "is_marked", "mark_committed"]
