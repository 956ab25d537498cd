"""The rollout record on disk, the operator's control requests, and the claim of the one runner.

Files in the state directory (see docs/ROLLOUTS.md for why files and not retained MQTT):
    <id>.json     the RolloutState, replaced atomically (temp file + rename) on every change
    current       the id of the newest rollout (what `status`, `pause`... act on by default)
    <id>.control  the operator's latest request (pause | resume | abort), consumed by the runner
    <id>.claim    {owner, pid, host, heartbeat}: the runner that advances this rollout
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.atomic import atomic_write
from builder.rollout.state import RolloutState

CLAIM_TTL_S = 15.0  # a claim whose heartbeat is older than this is abandoned (its runner died)


class RolloutStoreError(Exception):
    """No such rollout, or a broken record."""


class ClaimError(Exception):
    """Another live runner owns this rollout."""


def default_dir() -> Path:
    env = os.environ.get("EDGE_ROLLOUT_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-builder" / "rollouts"


class RolloutStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_dir()

    def save(self, st: RolloutState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / f"{st.id}.json", st.model_dump_json(indent=2).encode())

    def set_current(self, rollout_id: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / "current", rollout_id.encode())

    def current_id(self) -> str:
        try:
            return (self.root / "current").read_text().strip()
        except FileNotFoundError:
            raise RolloutStoreError(f"no rollout recorded in {self.root}") from None

    def load(self, rollout_id: str | None = None) -> RolloutState:
        rid = rollout_id or self.current_id()
        try:
            return RolloutState.model_validate_json((self.root / f"{rid}.json").read_bytes())
        except FileNotFoundError:
            raise RolloutStoreError(f"no rollout {rid!r} in {self.root}") from None
        except ValueError as exc:
            raise RolloutStoreError(f"rollout {rid!r}: broken record ({exc})") from None

    def request(self, rollout_id: str, action: str, rollback: bool = False) -> None:
        body = {"action": action, "rollback": rollback, "ts": time.time()}
        atomic_write(self.root / f"{rollout_id}.control", json.dumps(body).encode())

    def take_request(self, rollout_id: str) -> dict[str, Any] | None:
        path = self.root / f"{rollout_id}.control"
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        path.unlink(missing_ok=True)
        return data if isinstance(data, dict) else None

    def claim(self, rollout_id: str, owner: str | None = None, ttl_s: float = CLAIM_TTL_S) -> Claim:
        return Claim(self.root / f"{rollout_id}.claim", owner or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
                     ttl_s)


class Claim:
    """Who advances a rollout. Read-check-write under an flock, so two runners never both win."""

    def __init__(self, path: Path, owner: str, ttl_s: float) -> None:
        self.path, self.owner, self.ttl_s = path, owner, ttl_s

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def live_holder(self, now: float | None = None) -> dict[str, Any] | None:
        """The claim of another runner whose heartbeat is fresh, else None."""
        h = self.holder()
        now = time.time() if now is None else now
        if h and h.get("owner") != self.owner and now - float(h.get("heartbeat", 0)) < self.ttl_s:
            return h
        return None

    def acquire(self) -> None:
        with self._locked():
            h = self.live_holder()
            if h is not None:
                raise ClaimError(f"rollout is run by {h.get('owner')} (pid {h.get('pid')} on {h.get('host')}, "
                                 f"heartbeat {time.time() - float(h.get('heartbeat', 0)):.0f} s ago)")
            self._write()

    def heartbeat(self) -> None:
        """Refresh the claim; ClaimError when another runner took it over meanwhile."""
        with self._locked():
            h = self.holder()
            if h is not None and h.get("owner") != self.owner:
                raise ClaimError(f"claim lost to {h.get('owner')}")
            self._write()

    def release(self) -> None:
        with self._locked():
            h = self.holder()
            if h is not None and h.get("owner") == self.owner:
                self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        body = {"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time()}
        atomic_write(self.path, json.dumps(body).encode())


__all__ = ["CLAIM_TTL_S", "Claim", "ClaimError", "RolloutStore", "RolloutStoreError", "default_dir"]
