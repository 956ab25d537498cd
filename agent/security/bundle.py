"""Read, write and verify model bundles on disk (see agent.protocol.manifest)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.atomic import atomic_write
from agent.protocol.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from agent.security.signing import Keyring, SignatureError, SigningKey, read_signature_file


class BundleError(Exception):
    """A bundle is malformed, incomplete or altered. The message is for humans and status reports."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, rel: str) -> FileEntry:
    p = root / rel
    return FileEntry(path=rel, sha256=sha256_file(p), size=p.stat().st_size)


def parse_manifest(data: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise BundleError(f"manifest is invalid: {exc.error_count()} error(s): {exc.errors()[0]['msg']}") from exc


def check_files(root: Path, manifest: Manifest, complete: bool = True) -> frozenset[str]:
    """Every file present has the declared size and sha256; returns the paths present.

    `complete`: every listed file must be there (a bundle the builder publishes). Otherwise files may be
    absent as long as the manifest says a node can run without them (`Manifest.runnable_with`: a v2
    node fetches only its backend's files; a v1 bundle is always complete)."""
    held: set[str] = set()
    for entry in manifest.files:
        p = root / entry.path
        if not p.is_file():
            continue
        size = p.stat().st_size
        if size != entry.size:
            raise BundleError(f"{entry.path}: size {size} differs from manifest ({entry.size})")
        digest = sha256_file(p)
        if digest != entry.sha256:
            raise BundleError(f"{entry.path}: sha256 {digest[:12]}… differs from manifest ({entry.sha256[:12]}…)")
        held.add(entry.path)
    if len(held) < len(manifest.files) and (complete or not manifest.runnable_with(held)):
        # Name what the smallest complete set (the CPU node's) misses first, else the first absent file.
        cpu = manifest.needed_paths("cpu") or frozenset()
        absent = [f.path for f in manifest.files if f.path not in held]
        first = next((f for f in absent if f in cpu and not complete), absent[0])
        raise BundleError(f"{first}: missing from bundle")
    return frozenset(held)


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest
    manifest_bytes: bytes
    held: frozenset[str] | None = None  # the listed files present and verified (None: not checked)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def has(self, rel: str) -> bool:
        """Whether this copy holds file `rel` (a v2 node fetches only its backend's files)."""
        return rel in self.held if self.held is not None else (self.root / rel).is_file()

    def absent(self) -> list[str]:
        """The listed files this copy does not hold (those the node did not download)."""
        return [f.path for f in self.manifest.files if not self.has(f.path)]

    @classmethod
    def load(cls, root: Path, keyring: Keyring | None = None, check: bool = True, complete: bool = False) -> Bundle:
        """Load a bundle directory; with a keyring, verify the signature on the exact bytes first.

        `check`: sizes and sha256 of the files present, and enough of them for a node to run (`complete`:
        every listed file, e.g. before publishing). See `check_files`."""
        root = Path(root)
        mpath = root / MANIFEST_NAME
        try:
            data = mpath.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {mpath}: {exc.strerror}") from exc
        if keyring is not None:
            sig = read_signature_file(root / SIGNATURE_NAME)
            keyring.verify_file(data, sig)  # before parsing: untrusted JSON is not interpreted
        manifest = parse_manifest(data)
        held = check_files(root, manifest, complete) if check else None
        return cls(root, manifest, data, held)


def write_manifest(root: Path, manifest: Manifest, key: SigningKey | None = None) -> bytes:
    """Write manifest.json (atomically) and, with a key, manifest.sig over the same bytes."""
    data = manifest.to_bytes()
    atomic_write(root / MANIFEST_NAME, data)
    if key is not None:
        sign_bundle(root, key)
    return data


def sign_bundle(root: Path, key: SigningKey) -> None:
    data = (Path(root) / MANIFEST_NAME).read_bytes()
    atomic_write(Path(root) / SIGNATURE_NAME, key.signature_file(data).model_dump_json(indent=2).encode())


__all__ = [
    "Bundle",
    "BundleError",
    "SignatureError",
    "check_files",
    "file_entry",
    "parse_manifest",
    "sha256_file",
    "sign_bundle",
    "write_manifest",
]
