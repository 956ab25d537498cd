"""Keyring documents on disk, and installing a newer one delivered over the network (docs/KEYS.md).

A keyring directory: root.pub, keyring.json, keyring.json.sig (the current document; agent.security.signing
loads it) and history/ (every document ever stored there, `v00000007.json` + `.json.sig`). The history
lets the builder send, and a node verify, the chain of root changes: a node that missed a rotation
follows it, and on start a node checks that what it installed chains from what it was provisioned with.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from agent.atomic import atomic_write
from agent.security.keyring import (
    KEYRING_NAME,
    KEYRING_SIG_NAME,
    ROOT_PUB_NAME,
    KeyringDoc,
    KeyringSignatures,
    parse_signatures,
)
from agent.security.signing import (
    Keyring,
    SignatureError,
    SignatureFile,
    load_keys,
    read_root_pub,
    root_pub_bytes,
    to_keyring,
)
from agent.security.trust import follow_chain

HISTORY_DIR = "history"
_HISTORY_NAME = re.compile(r"^v(\d{8})\.json$")


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
    """Store a verified document as the current one in `keys_dir`, so that a power cut at any point leaves a
    directory that verifies either the old or the new document: while keyring.json is replaced (the commit
    point), keyring.json.sig carries the signatures of both and root.pub the root keys of both."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    new_roots = doc.root_keys()
    both_sigs = KeyringSignatures(signatures=[*_old_signatures(keys_dir), *sigs.signatures])
    atomic_write(keys_dir / KEYRING_SIG_NAME, both_sigs.to_bytes())
    atomic_write(keys_dir / ROOT_PUB_NAME, root_pub_bytes({**_old_roots(keys_dir), **new_roots}))
    atomic_write(keys_dir / KEYRING_NAME, data)
    atomic_write(keys_dir / ROOT_PUB_NAME, root_pub_bytes(new_roots))
    atomic_write(keys_dir / KEYRING_SIG_NAME, sigs.to_bytes())


def keep_history(keys_dir: Path, data: bytes, sigs: KeyringSignatures, doc: KeyringDoc) -> None:
    hist = keys_dir / HISTORY_DIR
    hist.mkdir(parents=True, exist_ok=True)
    atomic_write(hist / f"v{doc.version:08d}.json.sig", sigs.to_bytes())
    atomic_write(hist / f"v{doc.version:08d}.json", data)  # written last: a .json always has its .sig


def read_history(keys_dir: Path) -> list[tuple[bytes, KeyringSignatures]]:
    """Every stored document (bytes, signatures), oldest first; unverified (follow_chain verifies)."""
    hist = keys_dir / HISTORY_DIR
    try:
        names = sorted(n for n in os.listdir(hist) if _HISTORY_NAME.match(n))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SignatureError(f"cannot read {hist}: {exc.strerror or exc}") from None
    out = []
    for n in names:
        try:
            out.append(((hist / n).read_bytes(), parse_signatures((hist / f"{n}.sig").read_bytes(), n + ".sig")))
        except OSError as exc:
            raise SignatureError(f"cannot read {hist / n}: {exc.strerror or exc}") from None
    return out


def store_document(keys_dir: Path, data: bytes, sigs: KeyringSignatures, doc: KeyringDoc) -> None:
    """Keep `doc` in the history, then make it the current document."""
    keep_history(keys_dir, data, sigs, doc)
    write_keyring_files(keys_dir, data, sigs, doc)


def install_keyring(keys_dir: Path, doc_bytes: bytes, sig_bytes: bytes, *,
                    chain: Sequence[tuple[bytes, bytes]] = (), current: Keyring | None = None,
                    now: datetime | None = None) -> KeyringDoc:
    """Verify a keyring document delivered over the network against the trust in use (`current`, else
    what `keys_dir` holds), after the `chain` of root changes it may need (see trust.follow_chain), and
    store it in `keys_dir` (crash-safe). On success `current` adopts the new trust in place, so the
    updater holding it verifies the next announcement with it."""
    ring = current if current is not None else load_keys(keys_dir)
    if ring.document is None:
        raise SignatureError(
            f"{ring.source} is legacy flat trust (*.pub files): no root key can vouch for a keyring document; "
            "provision root.pub, keyring.json and keyring.json.sig (edge-builder keys init; docs/KEYS.md)"
        )
    links = [(b, parse_signatures(s, "keyring chain signatures")) for b, s in chain]
    accepted = follow_chain(ring.document, links, doc_bytes, parse_signatures(sig_bytes, "keyring signatures"), now)
    for doc, data, sigs in accepted:
        keep_history(keys_dir, data, sigs, doc)
    doc, data, sigs = accepted[-1]
    write_keyring_files(keys_dir, data, sigs, doc)
    if current is not None:
        current.replace_with(to_keyring(doc, source=str(keys_dir)))
    return doc


def load_trust(anchor_dir: Path, state_dir: Path | None = None) -> Keyring:
    """The node's trust: the provisioned keys (`anchor_dir`, read-only, e.g. /etc/edge-agent/keys) or, when
    newer, the keyring installed over the network into `state_dir` (writable by the agent), which must
    chain from the provisioned one through the state dir's history. A state dir without keyring.json
    means nothing was installed yet."""
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
    data = (state_dir / KEYRING_NAME).read_bytes()
    sigs = parse_signatures((state_dir / KEYRING_SIG_NAME).read_bytes())
    try:
        follow_chain(anchor.document, read_history(state_dir), data, sigs, check_expiry=False)
    except SignatureError as exc:
        raise SignatureError(
            f"the keyring installed in {state_dir} (v{installed.version}) does not chain from the provisioned "
            f"v{anchor.document.version} in {anchor_dir}: {exc}; remove {state_dir} to fall back to it"
        ) from None
    return installed


class KeyringLink(BaseModel):
    """One keyring document as sent over MQTT: its exact bytes and its signatures."""

    model_config = ConfigDict(extra="ignore")
    keyring_b64: str
    signatures: KeyringSignatures

    def document_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.keyring_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"keyring message: keyring_b64 is not base64: {exc}") from None


class KeyringMessage(KeyringLink):
    """Payload of the retained `{prefix}/keyring` topic: the current document, and every document that
    changed the root keys (oldest first), so that nodes that missed a rotation can follow it."""

    chain: list[KeyringLink] = Field(default_factory=list)

    @classmethod
    def build(cls, data: bytes, sigs: KeyringSignatures,
              chain: Sequence[tuple[bytes, KeyringSignatures]] = ()) -> KeyringMessage:
        def b64(b: bytes) -> str:
            return base64.b64encode(b).decode()

        links = [KeyringLink(keyring_b64=b64(b), signatures=s) for b, s in chain]
        return cls(keyring_b64=b64(data), signatures=sigs, chain=links)

    def install(self, keys_dir: Path, current: Keyring | None = None, now: datetime | None = None) -> KeyringDoc:
        chain = [(link.document_bytes(), link.signatures.to_bytes()) for link in self.chain]
        return install_keyring(keys_dir, self.document_bytes(), self.signatures.to_bytes(), chain=chain,
                               current=current, now=now)


__all__ = [
    "HISTORY_DIR",
    "KeyringLink",
    "KeyringMessage",
    "install_keyring",
    "keep_history",
    "load_trust",
    "read_history",
    "store_document",
    "write_keyring_files",
]
