"""A node's trust: loading it from a keys directory, and accepting a newer keyring document.

A keys directory holds either
- legacy flat trust: *.pub files; every key may sign bundles and nothing expires; or
- a keyring: `root.pub` (the pinned root key(s), one or more PEM blocks), `keyring.json` and
  `keyring.json.sig` (agent.security.keyring). Other *.pub files are then ignored: the document alone
  says who signs. A `root.pub` without `keyring.json` is an error, never legacy trust (the root key
  must not become a bundle signer by accident).

A new document is accepted (`accept_document`) only when it is signed by the current root keys (their
threshold) AND by its own root keys (its threshold), so a root change is cross-signed by old and new;
its version is higher than the current one; and it has not expired. Docs: docs/KEYS.md.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from agent.atomic import atomic_write
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
from agent.security.signing import Keyring, SignatureError, SignatureFile, key_id_of, public_key_from_pem

_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)
_ACCESS_HINT = "the agent's user must be able to read it, e.g. root:edge-agent mode 0750 and keys 0644"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {exc.strerror or exc} (uid {os.geteuid()}; {_ACCESS_HINT})") from None


def _names(d: Path) -> list[str]:
    """The entries of a keys directory; an unreadable directory is an error, never an empty keyring."""
    try:
        return sorted(os.listdir(d))
    except OSError as exc:
        raise SignatureError(
            f"cannot read trusted keys dir {d}: {exc.strerror or exc} (uid {os.geteuid()}; {_ACCESS_HINT})"
        ) from None


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
    if len(items) == 1 and items[0].is_dir():
        names = _names(items[0])
        if KEYRING_NAME in names or ROOT_PUB_NAME in names:
            return load_keyring_dir(items[0])
    ring = Keyring()
    for p in items:
        files = [p / n for n in _names(p) if n.endswith(".pub")] if p.is_dir() else [p]
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


def accept_document(current: KeyringDoc, data: bytes, sigs: KeyringSignatures,
                    now: datetime | None = None) -> KeyringDoc:
    """The rules for replacing `current` with the document `data`; SignatureError says which one failed."""
    require_threshold(data, sigs, current.root_keys(), current.threshold, f"current (v{current.version})")
    doc = parse_document(data)
    require_threshold(data, sigs, doc.root_keys(), doc.threshold, f"new (v{doc.version}) document's")
    if doc.version <= current.version:
        raise SignatureError(
            f"keyring v{doc.version} is not newer than the installed v{current.version} (replay or rollback)"
        )
    if doc.is_expired(now):
        raise SignatureError(f"keyring v{doc.version} expired at {doc.expires.isoformat()}")
    return doc


def _old_signatures(keys_dir: Path) -> list[SignatureFile]:
    try:
        return list(parse_signatures((keys_dir / KEYRING_SIG_NAME).read_bytes()).signatures)
    except (OSError, SignatureError):
        return []


def _old_roots(keys_dir: Path) -> dict[str, Ed25519PublicKey]:
    try:
        return read_root_pub(keys_dir / ROOT_PUB_NAME)
    except SignatureError:
        return {}


def write_keyring_files(keys_dir: Path, data: bytes, sigs: KeyringSignatures, doc: KeyringDoc) -> None:
    """Store a verified document in `keys_dir` so that a power cut at any point leaves a directory that
    verifies either the old or the new document: while keyring.json is replaced (the commit point),
    keyring.json.sig carries the signatures of both and root.pub the root keys of both."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    new_roots = doc.root_keys()
    both_sigs = KeyringSignatures(signatures=[*_old_signatures(keys_dir), *sigs.signatures])
    atomic_write(keys_dir / KEYRING_SIG_NAME, both_sigs.to_bytes())
    atomic_write(keys_dir / ROOT_PUB_NAME, root_pub_bytes({**_old_roots(keys_dir), **new_roots}))
    atomic_write(keys_dir / KEYRING_NAME, data)
    atomic_write(keys_dir / ROOT_PUB_NAME, root_pub_bytes(new_roots))
    atomic_write(keys_dir / KEYRING_SIG_NAME, sigs.to_bytes())


def install_keyring(keys_dir: Path, doc_bytes: bytes, sig_bytes: bytes, *, current: Keyring | None = None,
                    now: datetime | None = None) -> KeyringDoc:
    """Verify a keyring document delivered over the network against the trust in use (`current`, else
    what `keys_dir` holds) and store it in `keys_dir` (crash-safe). On success `current` adopts the new
    trust in place, so the updater holding it verifies the next announcement with it."""
    ring = current if current is not None else load_keys(keys_dir)
    if ring.document is None:
        raise SignatureError(
            f"{ring.source} is legacy flat trust (*.pub files): no root key can vouch for a keyring document; "
            "provision root.pub, keyring.json and keyring.json.sig (edge-builder keys init; docs/KEYS.md)"
        )
    sigs = parse_signatures(sig_bytes, "keyring signatures")
    doc = accept_document(ring.document, doc_bytes, sigs, now)
    write_keyring_files(keys_dir, doc_bytes, sigs, doc)
    if current is not None:
        current.replace_with(to_keyring(doc, source=str(keys_dir)))
    return doc


def load_trust(anchor_dir: Path, state_dir: Path | None = None) -> Keyring:
    """The node's trust: the provisioned keys (`anchor_dir`, read-only, e.g. /etc/edge-agent/keys) or, when
    newer, the keyring installed over the network into `state_dir` (writable by the agent). A state dir
    without keyring.json means nothing was installed yet."""
    anchor = load_keys(anchor_dir)
    if state_dir is None or anchor.document is None:
        return anchor
    try:
        os.stat(state_dir / KEYRING_NAME)
    except FileNotFoundError:
        return anchor
    except OSError as exc:
        raise SignatureError(f"cannot read {state_dir}: {exc.strerror or exc} (uid {os.geteuid()})") from None
    installed = load_keys(state_dir)
    if installed.document is None or installed.document.version <= anchor.document.version:
        return anchor
    return installed


class KeyringMessage(BaseModel):
    """Payload of the retained `{prefix}/keyring` topic: the exact document bytes and their signatures."""

    model_config = ConfigDict(extra="ignore")
    keyring_b64: str
    signatures: KeyringSignatures

    @classmethod
    def of(cls, data: bytes, sigs: KeyringSignatures) -> KeyringMessage:
        return cls(keyring_b64=base64.b64encode(data).decode(), signatures=sigs)

    def document_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.keyring_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"keyring message: keyring_b64 is not base64: {exc}") from None


__all__ = [
    "KeyringMessage",
    "accept_document",
    "install_keyring",
    "load_keyring_dir",
    "load_keys",
    "load_trust",
    "read_root_pub",
    "root_pub_bytes",
    "verify_stored",
    "write_keyring_files",
]
