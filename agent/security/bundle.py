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


def check_files(root: Path, manifest: Manifest) -> None:
    """Every listed file exists with the declared size and sha256."""
    for entry in manifest.files:
        p = root / entry.path
        if not p.is_file():
            raise BundleError(f"{entry.path}: missing from bundle")
        size = p.stat().st_size
        if size != entry.size:
            raise BundleError(f"{entry.path}: size {size} differs from manifest ({entry.size})")
        digest = sha256_file(p)
        if digest != entry.sha256:
            raise BundleError(f"{entry.path}: sha256 {digest[:12]}… differs from manifest ({entry.sha256[:12]}…)")


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest
    manifest_bytes: bytes

    def path(self, rel: str) -> Path:
        return self.root / rel

    @classmethod
    def load(cls, root: Path, keyring: Keyring | None = None, check: bool = True) -> Bundle:
        """Load a bundle directory; with a keyring, verify the signature on the exact bytes first."""
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
        if check:
            check_files(root, manifest)
        return cls(root, manifest, data)


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
