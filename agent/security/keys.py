"""Ed25519 keys and detached signatures: the primitives every trust decision is built on.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public). A key id is the first 16 hex digits of
sha256 over the raw 32-byte public key, so ids are stable across file names. Which keys are trusted, for
what and until when: agent.security.signing (the node's Keyring) and agent.security.keyring (the signed
keyring document). This module imports nothing of this project, so both can build on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

BUNDLE_ROLE = "bundle"  # the role a key needs to sign bundle manifests


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


def public_key_from_pem(pem: bytes, source: str = "<memory>") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError(f"cannot read public key {source}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{source} is not an Ed25519 public key")
    return key


def read_signature_file(path: Path) -> SignatureFile:
    try:
        return SignatureFile.model_validate(json.loads(Path(path).read_bytes()))
    except (OSError, ValueError) as exc:
        raise SignatureError(f"cannot read signature {path}: {exc}") from exc
