"""The dashboard's audit log: one JSON line per login and per state-changing request, refused ones too.

Append-only (O_APPEND, never rewritten or rotated by us) and fsynced per line: after a publish returns,
its line is on disk, so a crash cannot lose the record of what was signed. Readable with `jq`.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def default_path() -> Path:
    """$XDG_STATE_HOME/edge-fleet/dashboard-audit.jsonl (~/.local/state/... when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-fleet" / "dashboard-audit.jsonl"


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Opened once (fails at start, not at the first publish); 0600: it names remote addresses.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(self, who: str, remote: str, action: str, outcome: str, target: str | None = None,
               **detail: Any) -> dict[str, Any]:
        entry = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "who": who, "remote": remote,
                 "action": action, "target": target, "outcome": outcome, **detail}
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)  # one write() of one line: O_APPEND keeps lines whole
            os.fsync(self._fd)
        return entry

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit log (tests, scripts)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
