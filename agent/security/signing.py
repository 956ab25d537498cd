"""The keys this node trusts to sign bundles (`Keyring`), and loading that trust from a keys directory.

A keys directory holds either
- legacy flat trust: *.pub files; every key may sign bundles and nothing expires; or
- a keyring: `root.pub` (the pinned root key(s), one or more PEM blocks), `keyring.json` and
  `keyring.json.sig` (agent.security.keyring). Other *.pub files are then ignored: the document alone
  says who signs. A `root.pub` without `keyring.json` is an error, never legacy trust (the root key
  must not become a bundle signer by accident).

Key primitives (SigningKey, SignatureFile, key ids) live in agent.security.keys and are re-exported here;
accepting a newer keyring document: agent.security.trust; storing it on a node: agent.security.keyring_store.
Docs: docs/KEYS.md.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.security.keyring import (
    KEYRING_NAME,
    KEYRING_SIG_NAME,
    ROOT_PUB_NAME,
    KeyringDoc,
    KeyringSignatures,
    parse_document,
    parse_signatures,
    public_from_b64,
    require_threshold,
    valid_signers,
)
from agent.security.keys import (
    BUNDLE_ROLE,
    SignatureError,
    SignatureFile,
    SigningKey,
    key_id_of,
    public_key_from_pem,
    read_signature_file,
)


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
        self.enforce_expiry = True

    def installed(self) -> Keyring:
        """This trust for models the node already verified and committed: revocation and roles still apply,
        expiry does not. An expired keyring must never take away the last good model (freeze protection is
        about what a node is offered, not what it already runs). Made per use, so it follows replace_with."""
        view = Keyring.from_trusted(self.signers, revoked=self.revoked, document=self.document, source=self.source)
        view.enforce_expiry = False
        return view

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
        """Trust from key files or a keys directory; see load_keys."""
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
        if not self.enforce_expiry:
            return trusted
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


def to_keyring(doc: KeyringDoc, source: str = "<keyring document>") -> Keyring:
    """The runtime trust a verified document grants (the document stays attached for later updates)."""
    signers = {
        kid: TrustedKey(public_from_b64(e.public_b64), frozenset(e.roles), e.expires) for kid, e in doc.signers.items()
    }
    return Keyring.from_trusted(signers, revoked=doc.revoked, document=doc, source=source)


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)
_ACCESS_HINT = "the agent's user must be able to read it, e.g. root:edge-agent mode 0750 and keys 0644"


def _why(exc: OSError) -> str:
    hint = f"; {_ACCESS_HINT}" if isinstance(exc, PermissionError) else ""
    return f"{exc.strerror or exc} (uid {os.geteuid()}{hint})"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {_why(exc)}") from None


def _names(d: Path) -> list[str]:
    """The entries of a keys directory; an unreadable directory is an error, never an empty keyring."""
    try:
        return sorted(os.listdir(d))
    except OSError as exc:
        raise SignatureError(f"cannot read trusted keys dir {d}: {_why(exc)}") from None


def read_root_pub(path: Path) -> dict[str, Ed25519PublicKey]:
    """The pinned root key(s): one or more PEM public keys in one file, by key id."""
    blocks = _PEM_BLOCK.findall(_read(path))
    if not blocks:
        raise SignatureError(f"{path} holds no PEM public key")
    keys = [public_key_from_pem(b, str(path)) for b in blocks]
    return {key_id_of(k): k for k in keys}


def root_pub_bytes(keys: Mapping[str, Ed25519PublicKey]) -> bytes:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return b"".join(keys[kid].public_bytes(serialization.Encoding.PEM, spki) for kid in sorted(keys))


def load_keys(paths: list[Path] | Path) -> Keyring:
    """Trust from explicit key files, a directory of *.pub files (legacy), or a keyring directory."""
    items = [paths] if isinstance(paths, Path) else list(paths)
    if not items:
        raise SignatureError("no trusted key files given")
    ring = Keyring()
    for p in items:
        names = _names(p) if p.is_dir() else []
        if ROOT_PUB_NAME in names or KEYRING_NAME in names or p.name == ROOT_PUB_NAME:
            if len(items) > 1 or not names:  # a root key must never end up as a bundle signer
                raise SignatureError(f"{p} belongs to a keyring: load its directory alone")
            return load_keyring_dir(p)
        files = [p / n for n in names if n.endswith(".pub")] if p.is_dir() else [p]
        if not files:
            raise SignatureError(
                f"no *.pub keys in {p}: copy the fleet's public key there (edge-builder keygen) "
                "or a keyring (edge-builder keys init; docs/KEYS.md)"
            )
        for f in files:
            ring.add_pem(_read(f), str(f))
    ring.source = ", ".join(str(p) for p in items)
    return ring


def load_keyring_dir(d: Path) -> Keyring:
    """root.pub + keyring.json + keyring.json.sig, verified (an expired document still loads: its root
    keys can accept a newer one, but it trusts no bundle signature; see Keyring.signer)."""
    names = _names(d)
    missing = [n for n in (ROOT_PUB_NAME, KEYRING_NAME, KEYRING_SIG_NAME) if n not in names]
    if missing:
        raise SignatureError(
            f"keyring in {d} is incomplete: {', '.join(missing)} missing (edge-builder keys init writes all three; "
            "a legacy key must not be named root.pub)"
        )
    pinned = read_root_pub(d / ROOT_PUB_NAME)
    data = _read(d / KEYRING_NAME)
    sigs = parse_signatures(_read(d / KEYRING_SIG_NAME), str(d / KEYRING_SIG_NAME))
    return to_keyring(verify_stored(data, sigs, pinned, str(d / KEYRING_NAME)), source=str(d))


def verify_stored(data: bytes, sigs: KeyringSignatures, pinned: Mapping[str, Ed25519PublicKey],
                  source: str = KEYRING_NAME) -> KeyringDoc:
    """A stored document against the pinned root key(s), and against its own root keys."""
    if not valid_signers(data, sigs, pinned):  # authenticate the bytes before interpreting them
        raise SignatureError(f"{source} is not signed by the pinned root key(s) {', '.join(sorted(pinned))}")
    doc = parse_document(data, source)
    require_threshold(data, sigs, pinned, min(doc.threshold, len(pinned)), "pinned")
    require_threshold(data, sigs, doc.root_keys(), doc.threshold, "document's own")
    return doc


__all__ = [
    "BUNDLE_ROLE",
    "Keyring",
    "SignatureError",
    "SignatureFile",
    "SigningKey",
    "TrustedKey",
    "key_id_of",
    "load_keyring_dir",
    "load_keys",
    "public_key_from_pem",
    "read_root_pub",
    "read_signature_file",
    "root_pub_bytes",
    "to_keyring",
    "verify_stored",
]
