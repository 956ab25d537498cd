"""The on-disk model store of one node: installed bundle versions and the persisted update state.

Layout under `root` (the agent's state_dir/models):

    versions/<version>/    verified bundles (manifest.json, manifest.sig, model files)
    staging/<version>/     downloads in progress (kept across restarts so they resume with HTTP Range)
    state.json             StoreState, written atomically (temp file, fsync, rename, fsync dir)
    highwater              a second copy of the high-water mark (agent.updates.highwater)
    quarantine/            versions that failed verification when the state was rebuilt from disk

Crash rule (Mender's): only a *committed* version is ever run after a restart. A version that was
being activated or trialled when the process died is rolled back by `recover()`.

Power-loss rule: every file and rename the store relies on is fsynced (with its directory) first.
Losing state.json never deletes a verified version: `recover()` rebuilds the state from the bundles on
disk (agent.updates.rebuild) and the high-water mark from its other copies, so it never goes down.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.atomic import atomic_write, fsync_dir
from agent.protocol.messages import UpdateState, UpdateStatus
from agent.security.signing import Keyring
from agent.updates.highwater import COMMIT_MARK, HighWaterCounter, is_marked, mark_committed
from agent.updates.rebuild import scan_versions, set_aside
from agent.updates.state import ModelRecord, PendingUpdate, StoreState

log = logging.getLogger(__name__)

STATE_NAME = "state.json"


class StoreError(Exception):
    """The store cannot be read or written (disk full, read-only, corrupt). The message is for humans."""


class UpdatesConfig(BaseModel):
    """[updates] section of the agent config: OTA limits and trial policy."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    keep_versions: int = Field(default=2, ge=1, description="committed versions kept on disk (current included)")
    trial_frames: int = Field(default=30, ge=1, description="frames a new model must run cleanly before commit")
    trial_seconds: float = Field(
        default=10.0, gt=0, description="expected trial length (status text; a floor for trial_max_wait_s): "
        "a trial never commits on time alone"
    )
    trial_max_wait_s: float = Field(
        default=120.0, gt=0, description="wait this long for trial_frames clean frames; with fewer (a dead "
        "camera) the update is rolled back, never committed blind"
    )
    trial_max_error_frames: int = Field(default=0, ge=0, description="inference errors tolerated in a trial")
    trial_latency_factor: float = Field(
        default=3.0, gt=1, description="roll back when trial median latency exceeds the old median by this factor"
    )
    trial_latency_slack_ms: float = Field(default=5.0, ge=0, description="absolute slack added to that bound")
    max_bundle_bytes: int = Field(default=256 << 20, gt=0, description="refuse announcements declaring more")
    min_free_bytes: int = Field(default=16 << 20, ge=0, description="keep this much disk free after a download")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    total_timeout_s: float = Field(default=600.0, gt=0, description="a whole bundle download")
    download_retries: int = Field(default=2, ge=0, description="Range-resumed retries after a broken transfer")
    preflight: bool = Field(
        default=True, description="open new model files in a child process first (a bad .tflite can segfault)"
    )
    require_expires: bool = Field(
        default=True, description="refuse new announcements whose manifest has no `expires` (false: accept "
        "them, for fleets mid-migration)"
    )
    clock_sync: Literal["required", "unknown_ok", "off"] = Field(
        default="required", description="announcements with an expiry wait until the clock is synchronized; "
        "unknown_ok: also go ahead when the sync state cannot be read; off: never wait (clock trusted)"
    )
    clock_recheck_s: float = Field(default=30.0, gt=0, description="how often a held announcement re-checks the clock")


def describe_os_error(exc: OSError, what: str) -> str:
    """A clear, operator-facing message for the storage errors that matter on an SD card."""
    if exc.errno == errno.ENOSPC:
        return f"disk full while {what}: {exc.filename or ''} (free space on the model store)"
    if exc.errno == errno.EROFS:
        return f"storage is read-only while {what}: {exc.filename or ''} (remount read-write)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied while {what}: {exc.filename or ''}"
    return f"I/O error while {what}: {exc.strerror or exc} {exc.filename or ''}".rstrip()


class ModelStore:
    def __init__(self, root: Path, keep: int = 2, keyring: Keyring | None = None) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)
        # Without a keyring a lost state.json cannot be rebuilt (bundles can't be verified): nothing is
        # run from disk then, and nothing is deleted.
        self.keyring = keyring
        self.versions_dir = self.root / "versions"
        self.staging_root = self.root / "staging"
        self.quarantine_dir = self.root / "quarantine"
        self.state_path = self.root / STATE_NAME
        self.counter = HighWaterCounter(self.root)
        self.last_recovery: str | None = None  # what recover() had to repair, for humans

    # -- state ---------------------------------------------------------------------------------
    def ensure_dirs(self) -> None:
        try:
            for d in (self.root, self.versions_dir, self.staging_root):
                if not d.is_dir():
                    d.mkdir(parents=True, exist_ok=True)
                    fsync_dir(d.parent)
        except OSError as exc:
            raise StoreError(describe_os_error(exc, "creating the model store")) from exc

    def _parse_state(self, data: bytes) -> StoreState:
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict) or not {"committed", "high_water"} <= obj.keys():
                raise ValueError("not an update state (wrong schema)")
            return StoreState.model_validate(obj)
        except (ValueError, ValidationError) as exc:
            msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc).splitlines()[0]
            # The write is atomic, so this is corruption from outside; don't guess, refuse loudly.
            raise StoreError(f"{self.state_path} is corrupt: {msg}") from exc

    def load_state(self) -> StoreState:
        """The persisted state, its high-water mark raised to the counter file's (see high_water())."""
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return StoreState(high_water=self.high_water())
        except OSError as exc:
            raise StoreError(describe_os_error(exc, "reading the update state")) from exc
        state = self._parse_state(data)
        state.high_water = self.high_water(state)
        return state

    def high_water(self, state: StoreState | None = None) -> int:
        """The effective high-water mark: the largest of the readable copies (state, counter, committed)."""
        marks = [self.counter.read() or 0]
        if state is not None:
            marks += [state.high_water, *(r.version for r in state.committed)]
        return max(marks)

    def save_state(self, state: StoreState) -> None:
        """Commit marks and the counter first, then state.json: each copy is durable before it is relied on."""
        try:
            for r in state.committed:
                mark_committed(self.version_dir(r.version), r.name, r.version)
            self.counter.raise_to(state.high_water)
            atomic_write(self.state_path, state.model_dump_json(indent=2).encode())
        except OSError as exc:
            raise StoreError(describe_os_error(exc, "saving the update state")) from exc

    # -- directories ---------------------------------------------------------------------------
    def version_dir(self, version: int) -> Path:
        return self.versions_dir / str(int(version))

    def staging_dir(self, version: int) -> Path:
        return self.staging_root / str(int(version))

    def installed_versions(self) -> list[int]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.versions_dir.iterdir() if p.name.isdigit() and p.is_dir())

    def promote(self, version: int) -> Path:
        """Move a fully downloaded and checked staging dir into versions/ (one atomic rename)."""
        try:
            return self._move_in(self.staging_dir(version), version)
        except OSError as exc:
            raise StoreError(describe_os_error(exc, f"installing version {version}")) from exc

    def install_copy(self, src: Path, version: int) -> Path:
        """Copy a local bundle directory into versions/ (the node's first model, from the config)."""
        tmp = self.staging_root / f".seed-{version}"
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(src, tmp)
            (tmp / COMMIT_MARK).unlink(missing_ok=True)  # committed only when the state says so
            return self._move_in(tmp, version)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(describe_os_error(exc, f"installing {src}")) from exc

    def _move_in(self, src: Path, version: int) -> Path:
        """Rename a staged directory to versions/<version>. Every staged file and directory is fsynced
        first, so after a power cut the renamed directory holds the verified bytes, not empty files."""
        dst = self.version_dir(version)
        _fsync_tree(src)
        if dst.exists():
            self.remove_version(version)
        os.replace(src, dst)
        fsync_dir(self.versions_dir)
        fsync_dir(self.staging_root)
        return dst

    def remove_version(self, version: int) -> None:
        # The commit mark goes first: a half-deleted directory is never taken for a committed version.
        (self.version_dir(version) / COMMIT_MARK).unlink(missing_ok=True)
        shutil.rmtree(self.version_dir(version), ignore_errors=True)

    def clear_staging(self, keep: int | None = None) -> None:
        """Remove staging dirs, except the one of version `keep` (a download to resume)."""
        if not self.staging_root.is_dir():
            return
        for p in self.staging_root.iterdir():
            if keep is not None and p.name == str(keep):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def prune(self, state: StoreState) -> list[int]:
        """Keep the last `keep` committed versions (and anything pending or pinned); delete the rest."""
        keep_versions = {r.version for r in state.committed[-self.keep:]}
        if state.pending:
            keep_versions.add(state.pending.version)
        if state.pinned is not None:
            keep_versions.add(state.pinned)
        removed = []
        for v in self.installed_versions():
            if v not in keep_versions:
                self.remove_version(v)
                removed.append(v)
        if removed:
            fsync_dir(self.versions_dir)  # pruned for good: a power cut does not bring them back
            log.info("pruned model versions %s", removed)
        return removed

    def trim_committed(self, state: StoreState) -> None:
        """Drop committed records whose directories are gone (pruned) so rollback targets exist."""
        have = set(self.installed_versions())
        state.committed = [r for r in state.committed if r.version in have]

    # -- startup -------------------------------------------------------------------------------
    def recover(self, node: str) -> StoreState:
        """Apply the crash rule at startup and return the state to run with.

        An update that died while activating or in trial is rolled back (its files removed, the
        committed version stays current). A download that died keeps its staging dir so the next
        announcement resumes it with Range requests. A missing or corrupt state.json is rebuilt from
        the verified bundles on disk (never by deleting them); its high-water mark never goes down.
        """
        self.ensure_dirs()
        self.last_recovery = None
        state, lost = self._read_for_recovery()
        if lost is None and state.current is None and any(is_marked(self.version_dir(v))
                                                           for v in self.installed_versions()):
            lost = f"{self.state_path} names no current model although committed versions are on disk"
        if lost is not None:
            state = self._rebuild(node, lost, state.high_water)
            self.clear_staging()  # no pending record to resume a download from
            changed = True
        else:
            changed = self._roll_back_pending(state, node)
            self._remove_orphans(state)
        mark = max(self.high_water(state), state.high_water)
        unmarked = [r for r in state.committed if self.version_dir(r.version).is_dir()
                    and not is_marked(self.version_dir(r.version))]
        if changed or unmarked or mark != state.high_water or (self.counter.read() or 0) < mark:
            state.high_water = mark  # every copy rewritten from the largest readable one
            self.save_state(state)
        return state

    def _read_for_recovery(self) -> tuple[StoreState, str | None]:
        """(state, why it must be rebuilt or None). A corrupt file is moved aside for diagnosis."""
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            hw = self.counter.read()
            if hw is None and not self.installed_versions():
                return StoreState(), None  # a new node
            return StoreState(high_water=hw or 0), f"{self.state_path} is missing"
        except OSError as exc:
            raise StoreError(describe_os_error(exc, "reading the update state")) from exc
        try:
            return self._parse_state(data), None
        except StoreError as exc:
            return StoreState(), f"{exc}; {set_aside(self.state_path)}"

    def _rebuild(self, node: str, why: str, high_water: int) -> StoreState:
        """The state of a node that lost state.json, from the bundles on disk (see agent.updates.rebuild)."""
        state = StoreState(high_water=max(high_water, self.counter.read() or 0))
        if self.keyring is None:
            note = f"{why}: no keyring to verify the versions on disk; none is run, none is deleted"
        else:
            scan = scan_versions(self.versions_dir, self.keyring, self.quarantine_dir)
            recs = [ModelRecord(name=f.name, version=f.version) for f in scan.runnable()]
            state.committed = recs
            state.current = recs[-1] if recs else None
            state.previous = recs[-2] if len(recs) > 1 else None
            state.high_water = max(state.high_water, scan.highest_verified)
            running = f"running v{state.current.version}" if state.current else "no committed version left"
            note = f"{why}: state rebuilt from disk ({scan.describe()}); {running}"
        cur = state.current
        state.last_result = UpdateStatus(node=node, name=cur.name if cur else None,
                                         version=cur.version if cur else None, state=UpdateState.FAILED,
                                         reason=note, running_version=cur.version if cur else None)
        log.error("%s", note)
        self.last_recovery = note
        return state

    def _roll_back_pending(self, state: StoreState, node: str) -> bool:
        if state.pending is None:
            self.clear_staging()
            return False
        p = state.pending
        if p.phase in ("activating", "trial"):
            # Never delete a committed version's files (a "pin"/"rollback" to an installed one).
            if all(r.version != p.version for r in state.committed):
                self.remove_version(p.version)
            state.last_result = UpdateStatus(
                node=node, name=p.name, version=p.version, state=UpdateState.ROLLED_BACK,
                reason=f"agent restarted during {p.phase}: not committed, rolled back to "
                f"v{state.current.version if state.current else '?'}",
                running_version=state.current.version if state.current else None,
            )
            self.clear_staging()
        else:
            self.clear_staging(keep=p.version)
        state.pending = None
        return True

    def _remove_orphans(self, state: StoreState) -> None:
        """Versions on disk that no committed record names are leftovers of a crash: remove them.

        A version with a commit mark is kept (it was committed once: the state may be older than it)."""
        known = {r.version for r in state.committed}
        if state.pinned is not None:
            known.add(state.pinned)
        for v in self.installed_versions():
            if v not in known and not is_marked(self.version_dir(v)):
                self.remove_version(v)

    def inventory(self, state: StoreState) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for v in self.installed_versions():
            d = self.version_dir(v)
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            name, absent = None, []
            with contextlib.suppress(OSError, ValueError, AttributeError, TypeError, KeyError):
                doc = json.loads((d / "manifest.json").read_bytes())
                name = doc.get("name")
                # Files of a v2 manifest this node did not fetch (another backend's): listed, not missing.
                absent = [f["path"] for f in doc.get("files", []) if not (d / str(f["path"])).is_file()]
            out.append({
                "version": v, "name": name, "bytes": size, "not_fetched": absent,
                "current": state.current is not None and state.current.version == v,
                "previous": state.previous is not None and state.previous.version == v,
                "committed": any(r.version == v for r in state.committed),
                "pinned": state.pinned == v,
            })
        return out


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (deepest first) and `root` itself."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


__all__ = [
    "ModelRecord",
    "ModelStore",
    "PendingUpdate",
    "StoreError",
    "StoreState",
    "UpdatesConfig",
    "describe_os_error",
]
