"""Rebuilding a node's update state from the bundles on disk, when state.json is missing or corrupt.

Every `versions/<n>` directory is verified again (signature with the node's keyring, then every sha256).
A version that fails is moved to `quarantine/` (kept for diagnosis, never silently deleted); the others
are the candidates. Only a version with a commit mark (agent.updates.highwater) counts as committed, so
a version that was on trial when the state was lost is not run (Mender's rule). A node whose versions
predate commit marks runs its highest verified version instead of nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.atomic import fsync_dir
from agent.security.bundle import Bundle, BundleError
from agent.security.signing import Keyring, SignatureError
from agent.updates.highwater import is_marked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundVersion:
    version: int
    name: str
    committed: bool  # has a commit mark


@dataclass
class DiskScan:
    """What the versions directory holds, after verification."""

    verified: list[FoundVersion] = field(default_factory=list)  # ascending versions
    quarantined: list[tuple[int, str, Path]] = field(default_factory=list)  # (version, why, where now)

    @property
    def highest_verified(self) -> int:
        return max((f.version for f in self.verified), default=0)

    def runnable(self) -> list[FoundVersion]:
        """Committed versions, oldest first; without any commit mark, the highest verified one (legacy)."""
        marked = [f for f in self.verified if f.committed]
        if marked:
            return marked
        return self.verified[-1:]

    def describe(self) -> str:
        parts = [f"verified {', '.join(f'v{f.version}' for f in self.verified) or 'nothing'}"]
        if self.quarantined:
            parts.append("quarantined " + "; ".join(f"v{v} ({why}) -> {p}" for v, why, p in self.quarantined))
        return ", ".join(parts)


def quarantine(src: Path, quarantine_dir: Path, tag: str) -> Path:
    """Move `src` aside into `quarantine_dir` (one rename, both directories fsynced). Raises OSError."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    fsync_dir(quarantine_dir.parent)
    dst = quarantine_dir / f"{tag}-{_stamp()}"
    os.replace(src, dst)
    fsync_dir(quarantine_dir)
    fsync_dir(src.parent)
    return dst


def set_aside(path: Path) -> str:
    """Rename a corrupt file to `<name>.corrupt-<utc time>` for diagnosis; says where it went."""
    dst = path.with_name(f"{path.name}.corrupt-{_stamp()}")
    try:
        os.replace(path, dst)
        fsync_dir(path.parent)
    except OSError as exc:
        return f"could not move it aside: {exc}"
    return f"moved to {dst.name}"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _verify(path: Path, version: int, keyring: Keyring) -> tuple[str | None, str]:
    """(why it fails or None, model name)."""
    try:
        m = Bundle.load(path, keyring.installed()).manifest  # verified once already: expiry aside
    except (BundleError, SignatureError) as exc:
        return str(exc), ""
    except OSError as exc:
        return f"unreadable: {exc}", ""
    if m.version != version:
        return f"manifest says v{m.version}, directory says v{version}", m.name
    return None, m.name


def scan_versions(versions_dir: Path, keyring: Keyring, quarantine_dir: Path) -> DiskScan:
    """Verify every installed version; quarantine the ones that fail."""
    scan = DiskScan()
    if not versions_dir.is_dir():
        return scan
    dirs = sorted((int(p.name), p) for p in versions_dir.iterdir() if p.name.isdigit() and p.is_dir())
    for version, path in dirs:
        why, name = _verify(path, version, keyring)
        if why is None:
            scan.verified.append(FoundVersion(version, name, is_marked(path)))
            continue
        try:
            where = quarantine(path, quarantine_dir, str(version))
        except OSError as exc:
            log.error("cannot quarantine %s: %s", path, exc)
            where = path
        log.error("v%d fails verification (%s): quarantined to %s", version, why, where)
        scan.quarantined.append((version, why, where))
    return scan


__all__ = ["DiskScan", "FoundVersion", "quarantine", "scan_versions", "set_aside"]
