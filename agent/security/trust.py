"""Accepting a newer keyring document on a node: the rules a root rotation or a signer change must pass.

A new document is accepted (`accept_document`) only when it is signed by the current root keys (their
threshold) AND by its own root keys (its threshold), so a root change is cross-signed by old and new;
its version is higher than the current one; and it has not expired. Loading the current trust from a
keys directory: agent.security.signing; storing and installing documents on a node:
agent.security.keyring_store. Docs: docs/KEYS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agent.security.keyring import KeyringDoc, KeyringSignatures, parse_document, require_threshold
from agent.security.keys import SignatureError


class StaleKeyring(SignatureError):
    """The offered document is not newer than the current one: normal for a retained message seen again
    after a reconnect (ignore it quietly), or a replay/rollback attempt."""


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
    re-checks a stored chain (an expired current document still loads; see signing.load_keyring_dir)."""
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
]
