"""Editing the fleet keyring on the operator's machine (edge-builder keys ...).

A keyring directory holds root.pub, keyring.json and keyring.json.sig (agent.security.keyring); copy it
to every node's trusted-keys directory, or deliver later versions over MQTT (docs/KEYS.md). Every change
writes a new document with the version bumped, a fresh expiry, signed by the root key(s); before writing,
the new document is checked with the same rules a node applies (agent.security.trust.accept_document),
so what is written here is what nodes will accept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from agent.security.keyring import (
    KEYRING_NAME,
    KEYRING_SIG_NAME,
    KeyringDoc,
    parse_document,
    parse_signatures,
    public_to_b64,
    sign_document,
)
from agent.security.keyring_store import KeyringMessage, read_history, store_document
from agent.security.signing import (
    SignatureError,
    SigningKey,
    key_id_of,
    load_keys,
    public_key_from_pem,
    verify_stored,
)
from agent.security.trust import accept_document


def expiry(days: float) -> datetime:
    if days <= 0:
        raise SignatureError(f"expiry must be in the future, got {days:g} days")
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def build(fields: Mapping[str, object]) -> KeyringDoc:
    """A validated document; also refuses a root key as bundle signer (nodes would accept it, but the
    root key belongs offline: a signer sits on the build machine)."""
    try:
        doc = KeyringDoc.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "keyring"
        raise SignatureError(f"invalid keyring: {where}: {first['msg']}") from None
    both = sorted(set(doc.root) & set(doc.signers))
    if both:
        raise SignatureError(f"key {', '.join(both)} would be both root and bundle signer; use a separate signer key")
    return doc


def load_public(path: Path) -> Ed25519PublicKey:
    """A signer's public key from its .pub file, or derived from its private key file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"cannot read private key {path}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} is not an Ed25519 private key")
        return key.public_key()
    return public_key_from_pem(data, str(path))


def signer_entry(public: Ed25519PublicKey, roles: Sequence[str], expires_days: float | None) -> dict[str, object]:
    """A `SignerEntry` as fields (validated with the whole document by `build`)."""
    return {"public_b64": public_to_b64(public), "roles": list(roles),
            "expires": expiry(expires_days) if expires_days else None}


def read(keys_dir: Path) -> KeyringDoc:
    """The verified document of a keyring directory (an expired one too: renewing it is the fix)."""
    doc = load_keys(Path(keys_dir)).document
    if doc is None:
        raise SignatureError(f"{keys_dir} holds no {KEYRING_NAME} (legacy *.pub keys); create one with `keys init`")
    return doc


def init(out: Path, roots: Sequence[SigningKey], signers: Sequence[Ed25519PublicKey], *, threshold: int = 1,
         expires_days: float = 365, signer_expires_days: float | None = None) -> KeyringDoc:
    """The first document (version 1) of a new keyring in `out`, signed by every root key given."""
    out = Path(out)
    if (out / KEYRING_NAME).exists():
        raise SignatureError(f"{out / KEYRING_NAME} exists; change it with add-signer, revoke, rotate-root or renew")
    doc = build({
        "version": 1, "expires": expiry(expires_days), "threshold": threshold,
        "root": {k.key_id: public_to_b64(k.private.public_key()) for k in roots},
        "signers": {key_id_of(p): signer_entry(p, ["bundle"], signer_expires_days) for p in signers},
    })
    data = doc.canonical_bytes()
    sigs = sign_document(data, roots)
    verify_stored(data, sigs, doc.root_keys(), str(out / KEYRING_NAME))  # threshold met by the keys given
    store_document(out, data, sigs, doc)
    return doc


def publish_next(keys_dir: Path, current: KeyringDoc, changes: Mapping[str, object], signing: Sequence[SigningKey],
                 expires_days: float = 365) -> KeyringDoc:
    """Write `current` with `changes`, version + 1 and a fresh expiry, signed by `signing`; it must pass
    the node's rules against `current`."""
    fields = current.model_dump() | dict(changes) | {"version": current.version + 1, "expires": expiry(expires_days)}
    doc = build(fields)
    unknown = [k.key_id for k in signing if k.key_id not in current.root and k.key_id not in doc.root]
    if unknown:
        raise SignatureError(
            f"key(s) {', '.join(unknown)} are not root keys of keyring v{current.version} "
            f"(roots: {', '.join(sorted(current.root))})"
        )
    data = doc.canonical_bytes()
    sigs = sign_document(data, signing)
    accept_document(current, data, sigs)
    store_document(Path(keys_dir), data, sigs, doc)
    return doc


def add_signer(keys_dir: Path, roots: Sequence[SigningKey], public: Ed25519PublicKey, *,
               roles: Sequence[str] = ("bundle",), signer_expires_days: float | None = None,
               expires_days: float = 365) -> KeyringDoc:
    current = read(keys_dir)
    kid = key_id_of(public)
    if kid in current.revoked:
        raise SignatureError(f"key {kid} is revoked; a revoked key cannot be trusted again (make a new one)")
    signers = {**current.model_dump()["signers"], kid: signer_entry(public, roles, signer_expires_days)}
    return publish_next(keys_dir, current, {"signers": signers}, roots, expires_days)


def revoke(keys_dir: Path, roots: Sequence[SigningKey], key_id: str, *, expires_days: float = 365) -> KeyringDoc:
    current = read(keys_dir)
    if key_id in current.root:
        raise SignatureError(f"{key_id} is a root key: replace it with rotate-root")
    if key_id in current.revoked:
        raise SignatureError(f"{key_id} is already revoked in keyring v{current.version}")
    signers = {k: v for k, v in current.model_dump()["signers"].items() if k != key_id}
    changes = {"signers": signers, "revoked": sorted({*current.revoked, key_id})}
    return publish_next(keys_dir, current, changes, roots, expires_days)


def rotate_root(keys_dir: Path, old: Sequence[SigningKey], new: Sequence[SigningKey], *, threshold: int = 1,
                expires_days: float = 365) -> KeyringDoc:
    """Replace the root keys by `new`; the document is cross-signed by the old and the new root keys."""
    current = read(keys_dir)
    root = {k.key_id: public_to_b64(k.private.public_key()) for k in new}
    bad = [k.key_id for k in old if k.key_id not in current.root]
    if bad:
        raise SignatureError(f"--old key(s) {', '.join(bad)} are not root keys of keyring v{current.version}")
    signing = list({k.key_id: k for k in [*old, *new]}.values())
    return publish_next(keys_dir, current, {"root": root, "threshold": threshold}, signing, expires_days)


def renew(keys_dir: Path, roots: Sequence[SigningKey], *, expires_days: float = 365) -> KeyringDoc:
    """The same trust with a new version and expiry (documents expire; renew well before)."""
    return publish_next(keys_dir, read(keys_dir), {}, roots, expires_days)


def message(keys_dir: Path) -> KeyringMessage:
    """The `{prefix}/keyring` payload: the current document and, from the history, every root change."""
    keys_dir = Path(keys_dir)
    read(keys_dir)  # verified before it is offered to the fleet
    chain, root = [], None
    for data, sigs in read_history(keys_dir):
        doc = parse_document(data)
        if root is not None and (doc.root, doc.threshold) != root:
            chain.append((data, sigs))
        root = (doc.root, doc.threshold)
    current = parse_signatures((keys_dir / KEYRING_SIG_NAME).read_bytes())
    return KeyringMessage.build((keys_dir / KEYRING_NAME).read_bytes(), current, chain)


__all__ = [
    "add_signer", "build", "expiry", "init", "load_public", "message", "publish_next", "read", "renew", "revoke",
    "rotate_root",
]
