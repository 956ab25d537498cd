"""Ed25519 signing of bundle manifests, and verification against the keys this node trusts.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public). A key id is the first
16 hex digits of sha256 over the raw 32-byte public key, so ids are stable across file names.
Which keys are trusted, for what and until when: `Keyring` here; the signed keyring document in
agent.security.keyring; loading and replacing it on a node in agent.security.trust (docs/KEYS.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from agent.security.keyring import KeyringDoc

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


@dataclass(frozen=True)
class TrustedKey:
    """A public key this node trusts, the roles it may sign for and until when (None: no expiry of its own)."""

    public: Ed25519PublicKey
    roles: frozenset[str] = frozenset({BUNDLE_ROLE})
    expires: datetime | None = None


class Keyring:
    """The keys this node trusts to sign bundles.

    Either legacy flat trust (pinned *.pub files: every key may sign bundles, nothing expires) or the
    trust a verified keyring document grants (agent.security.keyring): roles, expiry, revocation, and the
    document itself (its root keys decide who may replace it; see agent.security.trust).
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self.signers: dict[str, TrustedKey] = {kid: TrustedKey(k) for kid, k in (keys or {}).items()}
        self.revoked: frozenset[str] = frozenset()
        self.document: KeyringDoc | None = None
        self.source = "<memory>"

    @classmethod
    def from_trusted(cls, signers: Mapping[str, TrustedKey], *, revoked: Iterable[str] = (),
                     document: KeyringDoc | None = None, source: str = "<memory>") -> Keyring:
        ring = cls()
        ring.signers, ring.revoked, ring.document, ring.source = dict(signers), frozenset(revoked), document, source
        return ring

    @property
    def keys(self) -> dict[str, Ed25519PublicKey]:
        """Keys that may sign bundles and are not revoked (expiry is checked when verifying)."""
        return {
            kid: t.public for kid, t in self.signers.items() if BUNDLE_ROLE in t.roles and kid not in self.revoked
        }

    @property
    def version(self) -> int | None:
        """The keyring document's version; None for legacy flat trust."""
        return self.document.version if self.document else None

    def replace_with(self, other: Keyring) -> None:
        """Adopt `other`'s trust in place, so every holder of this object (updater, model switch) sees it."""
        self.signers, self.revoked, self.document, self.source = (
            dict(other.signers), other.revoked, other.document, other.source)

    def add_pem(self, pem: bytes, source: str = "<memory>") -> str:
        """Pin one public key with the bundle role and no expiry (legacy flat trust)."""
        key = public_key_from_pem(pem, source)
        kid = key_id_of(key)
        self.signers[kid] = TrustedKey(key)
        return kid

    @classmethod
    def load(cls, paths: list[Path] | Path) -> Keyring:
        """Trust from key files or a keys directory; see agent.security.trust.load_keys."""
        from agent.security.trust import load_keys  # trust builds on this module

        return load_keys(paths)

    def signer(self, key_id: str, role: str = BUNDLE_ROLE, now: datetime | None = None) -> TrustedKey:
        """The key `key_id` if it may sign for `role` right now; else SignatureError saying why not."""
        where = f" (keyring v{self.version})" if self.document else ""
        if key_id in self.revoked:
            raise SignatureError(f"signing key {key_id} is revoked{where}")
        trusted = self.signers.get(key_id)
        if trusted is None:
            raise SignatureError(f"unknown signing key {key_id!r} (not pinned on this node)")
        if role not in trusted.roles:
            roles = ", ".join(sorted(trusted.roles)) or "none"
            raise SignatureError(f"key {key_id} may not sign for {role!r} (its roles: {roles}){where}")
        now = now or datetime.now(UTC)
        if trusted.expires is not None and now >= trusted.expires:
            raise SignatureError(f"signing key {key_id} expired at {trusted.expires.isoformat()}{where}")
        if self.document is not None and self.document.is_expired(now):
            raise SignatureError(
                f"the keyring document v{self.document.version} expired at {self.document.expires.isoformat()}: "
                "no signature is trusted until a newer one is installed (edge-builder keys renew)"
            )
        return trusted

    def verify(self, data: bytes, key_id: str, signature: bytes) -> None:
        """Raise SignatureError unless `signature` over the exact `data` is by a key trusted to sign bundles."""
        key = self.signer(key_id).public
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
