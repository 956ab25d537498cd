"""A small ALICE/CrashMonkey-style recorder: trace the file-system calls made under one directory, then
rebuild that directory as a power cut after any recorded call would leave it.

The crash model is the pessimistic one POSIX allows (no ordering between un-synced operations):
- a file's bytes survive only as of its last fsync; a file created or truncated and not yet fsynced
  comes back empty or missing (both variants are generated);
- a directory's entries (creations, renames, unlinks in it) survive only as of its last fsync;
- everything present when recording started is durable.

Inodes are tracked, so a rename moves the durable bytes with the file and a directory keeps its
durable entries wherever it is renamed to.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Durable-state changes an operation causes: ("content", inode, bytes | None) or ("entries", inode, {...}).
Delta = tuple[str, int, Any]
Entries = dict[str, tuple[int, bool]]  # name -> (inode, is_dir)

_open, _fsync, _replace, _rename, _mkdir = builtins.open, os.fsync, os.replace, os.rename, os.mkdir
_unlink, _remove, _rmdir, _rmtree = os.unlink, os.remove, os.rmdir, shutil.rmtree


@dataclass
class Op:
    kind: str  # write | fsync | rename | mkdir | unlink | rmdir | rmtree
    path: str
    deltas: list[Delta] = field(default_factory=list)


@dataclass
class Image:
    """The directory as a power cut leaves it: relative path -> bytes (None for a directory)."""

    files: dict[str, bytes | None]

    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((p, "dir" if b is None else hashlib.sha256(b).hexdigest()) for p, b in self.files.items()))

    def materialize(self, dst: Path) -> Path:
        dst.mkdir(parents=True)
        for rel, data in sorted(self.files.items()):
            p = dst / rel
            if data is None:
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        return dst


class Recorder:
    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.root_ino = os.stat(self.root).st_ino
        self.ops: list[Op] = []
        self.base_contents: dict[int, bytes | None] = {}
        self.base_entries: dict[int, Entries] = {}
        self._lock = threading.RLock()
        self._in_rmtree = 0
        self._snapshot_base()

    # -- the durable state when recording starts -------------------------------------------------
    def _snapshot_base(self) -> None:
        for dirpath, _dirs, files in os.walk(self.root):
            self.base_entries[os.stat(dirpath).st_ino] = _listing(dirpath)
            for name in files:
                p = os.path.join(dirpath, name)
                with _open(p, "rb") as f:
                    self.base_contents[os.stat(p).st_ino] = f.read()

    def _under(self, path: Any) -> str | None:
        if isinstance(path, int):
            return None
        s = os.path.abspath(os.fsdecode(os.fspath(path)))
        return s if s == self.root or s.startswith(self.root + os.sep) else None

    def _add(self, kind: str, path: str, deltas: list[Delta] | None = None) -> None:
        with self._lock:
            self.ops.append(Op(kind, os.path.relpath(path, self.root), deltas or []))

    # -- the traced calls --------------------------------------------------------------------------
    def open(self, file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        path = self._under(file) if isinstance(file, str | os.PathLike) else None
        writes = path is not None and any(c in mode for c in "wax+")
        existed = writes and os.path.exists(path)  # type: ignore[arg-type]
        f = _open(file, mode, *a, **kw)
        if writes and path is not None:
            ino = os.fstat(f.fileno()).st_ino
            # Truncated or new: its bytes are not durable until fsynced (appending keeps the synced part).
            lost = "w" in mode or "x" in mode or not existed
            self._add("write", path, [("content", ino, None)] if lost else [])
        return f

    def fsync(self, fd: int) -> None:
        _fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(" (deleted)") or self._under(path) is None:
            return
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self._add("fsync", path, [("entries", st.st_ino, _listing(path))])
        else:
            with _open(f"/proc/self/fd/{fd}", "rb") as f:
                self._add("fsync", path, [("content", st.st_ino, f.read())])

    def replace(self, src: Any, dst: Any, **kw: Any) -> None:
        _replace(src, dst, **kw)
        if (p := self._under(dst)) is not None:
            self._add("rename", p)

    def rename(self, src: Any, dst: Any, **kw: Any) -> None:
        _rename(src, dst, **kw)
        if (p := self._under(dst)) is not None:
            self._add("rename", p)

    def mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        _mkdir(path, mode, dir_fd=dir_fd)
        if dir_fd is None and (p := self._under(path)) is not None:
            self._add("mkdir", p, [("entries", os.stat(p).st_ino, {})])

    def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        if dir_fd is None and not self._in_rmtree and (p := self._under(path)) is not None:
            self._add("unlink", p)
        _unlink(path, dir_fd=dir_fd)

    def rmdir(self, path: Any, *, dir_fd: int | None = None) -> None:
        if dir_fd is None and not self._in_rmtree and (p := self._under(path)) is not None:
            self._add("rmdir", p)
        _rmdir(path, dir_fd=dir_fd)

    def rmtree(self, path: Any, *a: Any, **kw: Any) -> None:
        if (p := self._under(path)) is not None:
            self._add("rmtree", p)
        self._in_rmtree += 1
        try:
            _rmtree(path, *a, **kw)
        finally:
            self._in_rmtree -= 1

    @contextmanager
    def tracing(self) -> Iterator[Recorder]:
        """Route the process's file calls through the recorder (all threads) while the block runs."""
        patches = [(builtins, "open", self.open), (io, "open", self.open), (os, "fsync", self.fsync),
                   (os, "replace", self.replace), (os, "rename", self.rename), (os, "mkdir", self.mkdir),
                   (os, "unlink", self.unlink), (os, "remove", self.unlink), (os, "rmdir", self.rmdir),
                   (shutil, "rmtree", self.rmtree)]
        saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
        for mod, name, fn in patches:
            setattr(mod, name, fn)
        try:
            yield self
        finally:
            for mod, name, fn in saved:
                setattr(mod, name, fn)

    # -- power cuts --------------------------------------------------------------------------------
    def images(self, unsynced: str) -> Iterator[tuple[int, Image]]:
        """(cut, image) for a power cut after each of the first `cut` ops, cut = 0..len(ops).

        unsynced: "empty" or "missing", what an un-fsynced file becomes."""
        contents, entries = dict(self.base_contents), dict(self.base_entries)
        for cut in range(len(self.ops) + 1):
            if cut:
                for what, ino, value in self.ops[cut - 1].deltas:
                    (contents if what == "content" else entries)[ino] = value
            files: dict[str, bytes | None] = {}
            _build(self.root_ino, "", contents, entries, files, unsynced, depth=0)
            yield cut, Image(files)


def _listing(path: str) -> Entries:
    with os.scandir(path) as it:
        return {e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in it}


def _build(dir_ino: int, rel: str, contents: dict[int, bytes | None], entries: dict[int, Entries],
           out: dict[str, bytes | None], unsynced: str, depth: int) -> None:
    if depth > 32:
        return
    for name, (ino, is_dir) in entries.get(dir_ino, {}).items():
        p = f"{rel}{name}"
        if is_dir:
            out[p] = None
            _build(ino, f"{p}/", contents, entries, out, unsynced, depth + 1)
            continue
        data = contents.get(ino)
        if data is None and unsynced == "missing":
            continue
        out[p] = data or b""


__all__ = ["Image", "Op", "Recorder"]
