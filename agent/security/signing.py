"""Ed25519 signing of bundle manifests, and verification against pinned public keys.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public). A key id is the first
16 hex digits of sha256 over the raw 32-byte public key, so ids are stable across file names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict


class SignatureError(Exception):
    """A manifest failed verification. The message says why, for the update status."""


class SignatureFile(BaseModel):
    """Contents of manifest.sig."""

    model_config = ConfigDict(extra="forbid")
    algorithm: str = "ed25519"
    key_id: str
    signature_b64: str


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id_of(self.private.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def signature_file(self, data: bytes) -> SignatureFile:
        return SignatureFile(key_id=self.key_id, signature_b64=base64.b64encode(self.sign(data)).decode())

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise SignatureError(f"cannot read private key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, private_path: Path) -> Path:
        """Write the private key (mode 0600) and `<name>.pub` beside it; return the public path."""
        private_path = Path(private_path)
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub = private_path.with_suffix(".pub")
        pub.write_bytes(self.public_pem())
        return pub


class Keyring:
    """Pinned public keys by key id (a directory of *.pub files, or explicit files)."""

    def __init__(self, keys: dict[str, Ed25519PublicKey] | None = None) -> None:
        self.keys: dict[str, Ed25519PublicKey] = dict(keys or {})

    def add_pem(self, pem: bytes, source: str = "<memory>") -> str:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise SignatureError(f"cannot read public key {source}: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{source} is not an Ed25519 public key")
        kid = key_id_of(key)
        self.keys[kid] = key
        return kid

    @classmethod
    def load(cls, paths: list[Path] | Path) -> Keyring:
        ring = cls()
        items = [paths] if isinstance(paths, Path) else list(paths)
        for p in items:
            files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
            for f in files:
                ring.add_pem(f.read_bytes(), str(f))
        return ring

    def verify(self, data: bytes, key_id: str, signature: bytes) -> None:
        """Raise SignatureError unless `signature` over the exact `data` is by pinned key `key_id`."""
        key = self.keys.get(key_id)
        if key is None:
            raise SignatureError(f"unknown signing key {key_id!r} (not pinned on this node)")
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(f"bad signature by key {key_id}: manifest altered or wrongly signed") from None

    def verify_file(self, data: bytes, sig: SignatureFile) -> None:
        if sig.algorithm != "ed25519":
            raise SignatureError(f"unsupported signature algorithm {sig.algorithm!r}")
        try:
            raw = base64.b64decode(sig.signature_b64, validate=True)
        except ValueError as exc:
            raise SignatureError(f"signature is not base64: {exc}") from None
        self.verify(data, sig.key_id, raw)


def read_signature_file(path: Path) -> SignatureFile:
    try:
        return SignatureFile.model_validate(json.loads(Path(path).read_bytes()))
    except (OSError, ValueError) as exc:
        raise SignatureError(f"cannot read signature {path}: {exc}") from exc
