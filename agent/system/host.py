"""Host files under a root prefix: os-release, users and groups, device nodes, disk space, writability.

Formats:
- /etc/os-release: KEY=value lines, values optionally quoted (os-release(5)).
- /etc/passwd: name:password:UID:GID:GECOS:home:shell (passwd(5)).
- /etc/group: name:password:GID:member,member (group(5)); the primary group of a user is the GID in
  /etc/passwd and is usually not repeated in the member list.
Users and groups are read from the files rather than getpwnam(3) so a fake root is honoured (NSS/LDAP
users are not seen; a service account made by systemd-sysusers is always in the files).
"""

from __future__ import annotations

import os
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostRoot:
    """Maps absolute host paths under `root` ("/" on a real node, a fake tree in tests)."""

    root: Path = Path("/")

    def path(self, p: str | Path) -> Path:
        return self.root / str(p).lstrip("/")

    def read(self, p: str | Path) -> str | None:
        try:
            return self.path(p).read_text(errors="replace")
        except OSError:
            return None


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            try:
                parts = shlex.split(value)
            except ValueError:
                parts = [value]
            out[key] = parts[0] if parts else ""
    return out


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def parse_groups(text: str) -> list[Group]:
    out = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 4 and f[2].isdigit():
            out.append(Group(f[0], int(f[2]), tuple(m for m in f[3].split(",") if m)))
    return out


def parse_passwd(text: str) -> list[User]:
    out = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 7 and f[2].isdigit() and f[3].isdigit():
            out.append(User(f[0], int(f[2]), int(f[3]), f[5]))
    return out


@dataclass(frozen=True)
class Accounts:
    users: list[User]
    groups: list[Group]

    @classmethod
    def load(cls, host: HostRoot) -> Accounts:
        return cls(parse_passwd(host.read("/etc/passwd") or ""), parse_groups(host.read("/etc/group") or ""))

    def user(self, name: str) -> User | None:
        return next((u for u in self.users if u.name == name), None)

    def group_name(self, gid: int) -> str:
        return next((g.name for g in self.groups if g.gid == gid), str(gid))

    def groups_of(self, user: User) -> set[str]:
        """Primary group (from passwd) plus every group listing the user as a member."""
        names = {g.name for g in self.groups if user.name in g.members}
        names.add(self.group_name(user.gid))
        return names

    def gids_of(self, user: User) -> set[int]:
        return {g.gid for g in self.groups if user.name in g.members} | {user.gid}


@dataclass(frozen=True)
class NodeInfo:
    """Owner, group and permission bits of a file or device node."""

    path: Path
    mode: int
    uid: int
    gid: int

    @classmethod
    def of(cls, path: Path) -> NodeInfo:
        st = path.stat()
        return cls(path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    def allows(self, uid: int, gids: set[int], want: int) -> bool:
        """Would a process with `uid`/`gids` get `want` (os.R_OK|os.W_OK|os.X_OK) by the mode bits?"""
        if uid == 0:
            return True
        shift = 6 if uid == self.uid else 3 if self.gid in gids else 0
        bits = (self.mode >> shift) & 0o7
        return bits & want == want


def free_bytes(path: Path) -> tuple[Path, int]:
    """statvfs of `path`, or of its nearest existing parent; (the path measured, bytes free to non-root)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return p, st.f_bavail * st.f_frsize


def dir_size(path: Path) -> int:
    total = 0
    for f in path.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            continue
    return total


def try_write(directory: Path) -> None:
    """Create and delete a file in `directory`; raises OSError if the caller cannot."""
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-", delete=True) as f:
        f.write(b"x")
        f.flush()
