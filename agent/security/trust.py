"""A node's trust: loading it from a keys directory, and accepting a newer keyring document.

A keys directory holds either
- legacy flat trust: *.pub files; every key may sign bundles and nothing expires; or
- a keyring: `root.pub` (the pinned root key(s), one or more PEM blocks), `keyring.json` and
  `keyring.json.sig` (agent.security.keyring). Other *.pub files are then ignored: the document alone
  says who signs. A `root.pub` without `keyring.json` is an error, never legacy trust (the root key
  must not become a bundle signer by accident).

A new document is accepted (`accept_document`) only when it is signed by the current root keys (their
threshold) AND by its own root keys (its threshold), so a root change is cross-signed by old and new;
its version is higher than the current one; and it has not expired. Storing and installing documents
on a node: agent.security.keyring_store. Docs: docs/KEYS.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

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
    require_threshold,
    to_keyring,
    valid_signers,
)
from agent.security.signing import Keyring, SignatureError, key_id_of, public_key_from_pem


class StaleKeyring(SignatureError):
    """The offered document is not newer than the current one: normal for a retained message seen again
    after a reconnect (ignore it quietly), or a replay/rollback attempt."""


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


def accept_document(current: KeyringDoc, data: bytes, sigs: KeyringSignatures, now: datetime | None = None, *,
                    check_expiry: bool = True) -> KeyringDoc:
    """The rules for replacing `current` with the document `data`; SignatureError says which one failed.
    `check_expiry=False` only for the intermediate links of a chain (see follow_chain)."""
    require_threshold(data, sigs, current.root_keys(), current.threshold, f"current (v{current.version})")
    doc = parse_document(data)
    require_threshold(data, sigs, doc.root_keys(), doc.threshold, f"new (v{doc.version}) document's")
    if doc.version <= current.version:
        raise StaleKeyring(
            f"keyring v{doc.version} is not newer than the installed v{current.version} (replay or rollback)"
        )
    if check_expiry and doc.is_expired(now):
        raise SignatureError(f"keyring v{doc.version} expired at {doc.expires.isoformat()}")
    return doc


Accepted = tuple[KeyringDoc, bytes, KeyringSignatures]


def follow_chain(current: KeyringDoc, links: Sequence[tuple[bytes, KeyringSignatures]], data: bytes,
                 sigs: KeyringSignatures, now: datetime | None = None, *, check_expiry: bool = True
                 ) -> list[Accepted]:
    """Accept `data` after the `links` newer than `current` (each accepted by the one before it, expiry
    aside), so a node that missed a root rotation can still follow it: every document is signed by the
    root of the version before it, so the links must hold every root change since `current`.
    Returns every accepted (document, bytes, signatures), the last one being `data`'s. `check_expiry=False`
    re-checks a stored chain (an expired current document still loads; see load_keyring_dir)."""
    target = parse_document(data).version  # versions only pick the links that apply; each is verified
    versioned = sorted(((parse_document(b, "keyring chain link").version, b, s) for b, s in links),
                       key=lambda v: v[0])
    accepted: list[Accepted] = []
    for version, link, link_sigs in versioned:
        if current.version < version < target:
            current = accept_document(current, link, link_sigs, check_expiry=False)
            accepted.append((current, link, link_sigs))
    accepted.append((accept_document(current, data, sigs, now, check_expiry=check_expiry), data, sigs))
    return accepted


__all__ = [
    "StaleKeyring",
    "accept_document",
    "follow_chain",
    "load_keyring_dir",
    "load_keys",
    "read_root_pub",
    "root_pub_bytes",
    "verify_stored",
]
