"""The fleet keyring document (TUF-style): which keys may sign bundles, until when, and who may change that.

`keyring.json` holds the canonical JSON of a `KeyringDoc` (sorted keys, no whitespace, so the bytes are
reproducible); `keyring.json.sig` holds `KeyringSignatures`, one `SignatureFile` per root key that
signed those exact bytes. The root keys sign only keyring documents; bundles are signed by the
`signers` that have the "bundle" role. The node-side rules (who may replace a document) live in
agent.security.trust, the trust a document grants in agent.security.signing (to_keyring); this module is
the format and the signature arithmetic, built on agent.security.keys only.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from agent.security.keys import BUNDLE_ROLE, SignatureError, SignatureFile, SigningKey, key_id_of

KEYRING_NAME = "keyring.json"
KEYRING_SIG_NAME = "keyring.json.sig"
ROOT_PUB_NAME = "root.pub"

Role = Literal["bundle"]
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]  # see keys.key_id_of


def public_from_b64(text: str) -> Ed25519PublicKey:
    """A raw 32-byte Ed25519 public key from base64 (the form stored in the document)."""
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 raw Ed25519 public key: {exc}") from None


def public_to_b64(public: Ed25519PublicKey) -> str:
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def _check_key_id(kid: str, b64: str, what: str) -> None:
    actual = key_id_of(public_from_b64(b64))
    if actual != kid:
        raise ValueError(f"{what} {kid}: the public key's id is {actual}")


class SignerEntry(BaseModel):
    """A key that may sign what its roles allow, until `expires` (None: as long as the document)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    public_b64: str
    roles: list[Role] = ["bundle"]
    expires: AwareDatetime | None = None


class KeyringDoc(BaseModel):
    """The signed trust document. `version` only ever goes up; `expires` bounds every signer."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = 1
    version: int = Field(ge=1)
    expires: AwareDatetime
    root: dict[KeyId, str] = Field(min_length=1)  # key id -> raw public key, base64
    threshold: int = Field(default=1, ge=1)
    signers: dict[KeyId, SignerEntry] = Field(default_factory=dict)
    revoked: list[KeyId] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> KeyringDoc:
        if self.threshold > len(self.root):
            raise ValueError(f"threshold {self.threshold} is more than the {len(self.root)} root key(s)")
        for kid, b64 in self.root.items():
            _check_key_id(kid, b64, "root key")
        for kid, entry in self.signers.items():
            _check_key_id(kid, entry.public_b64, "signer")
        both = sorted(set(self.revoked) & (set(self.signers) | set(self.root)))
        if both:
            raise ValueError(f"revoked key(s) {', '.join(both)} still listed as signer or root")
        return self

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed and stored (sorted keys, no whitespace, UTC times)."""
        obj = self.model_dump(mode="json")
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def root_keys(self) -> dict[str, Ed25519PublicKey]:
        return {kid: public_from_b64(b64) for kid, b64 in self.root.items()}

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires


class KeyringSignatures(BaseModel):
    """Contents of keyring.json.sig: detached signatures over the exact bytes of keyring.json."""

    model_config = ConfigDict(extra="forbid")
    signatures: list[SignatureFile] = Field(default_factory=list)

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()


def parse_document(data: bytes, source: str = KEYRING_NAME) -> KeyringDoc:
    try:
        return KeyringDoc.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise SignatureError(f"{source} is invalid: {where}: {first['msg']}") from None


def parse_signatures(data: bytes, source: str = KEYRING_SIG_NAME) -> KeyringSignatures:
    try:
        return KeyringSignatures.model_validate_json(data)
    except ValidationError as exc:
        raise SignatureError(f"{source} is invalid: {exc.errors()[0]['msg']}") from None


def sign_document(data: bytes, keys: Iterable[SigningKey]) -> KeyringSignatures:
    return KeyringSignatures(signatures=[k.signature_file(data) for k in keys])


def valid_signers(data: bytes, sigs: KeyringSignatures, keys: Mapping[str, Ed25519PublicKey]) -> set[str]:
    """Ids of the `keys` with a good signature over `data` (each key counts once; others are ignored)."""
    good: set[str] = set()
    for s in sigs.signatures:
        key = keys.get(s.key_id)
        if key is None or s.algorithm != "ed25519" or s.key_id in good:
            continue
        try:
            key.verify(base64.b64decode(s.signature_b64, validate=True), data)
        except (InvalidSignature, binascii.Error, ValueError):
            continue
        good.add(s.key_id)
    return good


def require_threshold(data: bytes, sigs: KeyringSignatures, keys: Mapping[str, Ed25519PublicKey],
                      threshold: int, whose: str) -> None:
    """Raise SignatureError unless at least `threshold` of `keys` signed `data`."""
    good = valid_signers(data, sigs, keys)
    if len(good) < threshold:
        ids = ", ".join(sorted(keys))
        raise SignatureError(
            f"keyring document signed by {len(good)} of the {whose} root key(s) [{ids}], needs {threshold}"
        )


__all__ = [
    "BUNDLE_ROLE",
    "KEYRING_NAME",
    "KEYRING_SIG_NAME",
    "ROOT_PUB_NAME",
    "KeyringDoc",
    "KeyringSignatures",
    "SignerEntry",
    "parse_document",
    "parse_signatures",
    "public_from_b64",
    "public_to_b64",
    "require_threshold",
    "sign_document",
    "valid_signers",
]
