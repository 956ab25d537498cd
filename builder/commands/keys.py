"""edge-builder keygen / sign / keys: Ed25519 keys for bundle signatures, and the fleet keyring (docs/KEYS.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import SubParsers, show_help

if TYPE_CHECKING:
    from agent.security.keyring import KeyringDoc
    from agent.security.signing import SigningKey


def register(sub: SubParsers) -> None:
    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair (KEY and KEY.pub)")
    p.add_argument("key", type=Path, help="private key file to create, e.g. keys/fleet.key (mode 0600)")
    p.set_defaults(func=_keygen)

    s = sub.add_parser("sign", help="sign (or re-sign) a bundle directory's manifest.json")
    s.add_argument("bundle", type=Path, help="bundle directory")
    s.add_argument("--key", type=Path, required=True, help="private key file from keygen")
    s.set_defaults(func=_sign)

    k = sub.add_parser("keys", help="the fleet keyring: root keys, bundle signers, expiry, revocation (docs/KEYS.md)",
                       description="Each change writes keyring.json v+1 with a fresh expiry, signed by the root "
                       "key(s), into the keyring directory (root.pub, keyring.json, keyring.json.sig).")
    k.set_defaults(func=show_help(k))
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION")
    _register_keyring(ks)


def _keygen(args: argparse.Namespace) -> int:
    from agent.security.signing import SigningKey

    if args.key.exists():
        print(f"error: {args.key} exists; refusing to overwrite a signing key", file=sys.stderr)
        return 1
    args.key.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    pub = key.save(args.key)
    print(f"private key: {args.key} (keep it secret)\npublic key:  {pub} (pin it on every node)\nkey id:      {key.key_id}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from agent.security.bundle import Bundle, BundleError, sign_bundle
    from agent.security.signing import SignatureError, SigningKey

    try:
        key = SigningKey.load(args.key)
        bundle = Bundle.load(args.bundle, complete=True)  # checks every file's sha256 before we vouch for it
        sign_bundle(args.bundle, key)
    except (BundleError, SignatureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"signed {bundle.manifest.name} v{bundle.manifest.version} with key {key.key_id}")
    return 0


# --------------------------------------------------------------------------------------- keys ACTION

def _expiry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expires-days", type=float, default=365, metavar="DAYS",
                   help="the new keyring document expires after this many days (default 365); nodes then "
                   "trust no bundle signature until a newer document arrives")


def _signer_expiry_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signer-expires-days", type=float, default=None, metavar="DAYS",
                   help="the signer(s) expire after this many days (default: only with the document)")


def _root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, action="append", required=True, metavar="ROOT.key",
                   help="a root private key (repeat for a threshold above 1)")


def _action(ks: SubParsers, name: str, help: str,
            action: Callable[[argparse.Namespace], KeyringDoc | None], *, root: bool, change: bool
            ) -> argparse.ArgumentParser:
    """One `keys ACTION` parser: the keyring directory (except for init), --root, --expires-days for changes."""
    p = ks.add_parser(name, help=help, description=help)
    if name != "init":
        p.add_argument("dir", type=Path, metavar="DIR", help="keyring directory (root.pub, keyring.json, keyring.json.sig)")
    if root:
        _root_arg(p)
    if change:
        _expiry_args(p)
    p.set_defaults(func=_cmd(action))
    return p


def _register_keyring(ks: SubParsers) -> None:
    p = _action(ks, "init", "create keyring v1 in --out, signed by the root key(s)", _init, root=True, change=True)
    p.add_argument("--signer", type=Path, action="append", default=[], metavar="SIGNER.key|SIGNER.pub",
                   help="a bundle signing key (its .pub, or the private key to derive it from); repeatable")
    p.add_argument("--out", type=Path, required=True, help="keyring directory to create")
    p.add_argument("--threshold", type=int, default=1, help="root signatures a change needs (default 1)")
    _signer_expiry_arg(p)

    p = _action(ks, "add-signer", "trust one more key to sign bundles", _add_signer, root=True, change=True)
    p.add_argument("--signer", type=Path, required=True, metavar="SIGNER.key|SIGNER.pub", help="the key to add")
    _signer_expiry_arg(p)

    p = _action(ks, "revoke", "revoke a bundle signing key: nodes refuse its signatures from then on", _revoke,
                root=True, change=True)
    p.add_argument("key_id", metavar="KEYID", help="id of the key to revoke (see `keys show`)")

    p = _action(ks, "rotate-root", "replace the root key(s); the document is signed by the old and the new ones",
                _rotate_root, root=False, change=True)
    p.add_argument("--old", type=Path, action="append", required=True, metavar="OLD.key",
                   help="a current root private key (enough of them for the current threshold)")
    p.add_argument("--new", type=Path, action="append", required=True, metavar="NEW.key",
                   help="a new root private key (repeatable; all of them sign)")
    p.add_argument("--threshold", type=int, default=1, help="root signatures the new root needs (default 1)")

    _action(ks, "renew", "the same trust with a new version and expiry", _renew, root=True, change=True)
    p = _action(ks, "show", "verify a keyring directory and print its document", _show, root=False, change=False)
    p.add_argument("--json", action="store_true", help="print the document as JSON")
    _action(ks, "message", "print the JSON payload that delivers this keyring to nodes over MQTT (docs/KEYS.md)",
            _message, root=False, change=False)


def _cmd(action: Callable[[argparse.Namespace], KeyringDoc | None]) -> Callable[[argparse.Namespace], int]:
    """Run a keyring action; a SignatureError is a clear one-line error (exit 1), not a traceback."""
    def run(args: argparse.Namespace) -> int:
        from agent.security.signing import SignatureError

        try:
            doc = action(args)
        except SignatureError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if doc is not None:
            print(_describe(doc))
            where = getattr(args, "out", None) or args.dir
            print(f"wrote {where}/keyring.json v{doc.version}: copy root.pub, keyring.json and keyring.json.sig to "
                  "each node's trusted keys dir, or deliver it over MQTT (docs/KEYS.md)")
        return 0
    return run


def _keys(paths: list[Path]) -> list[SigningKey]:
    from agent.security.signing import SigningKey

    return [SigningKey.load(p) for p in paths]


def _init(args: argparse.Namespace) -> KeyringDoc:
    from builder.fleet import keyring

    signers = [keyring.load_public(p) for p in args.signer]
    return keyring.init(args.out, _keys(args.root), signers, threshold=args.threshold,
                        expires_days=args.expires_days, signer_expires_days=args.signer_expires_days)


def _add_signer(args: argparse.Namespace) -> KeyringDoc:
    from builder.fleet import keyring

    return keyring.add_signer(args.dir, _keys(args.root), keyring.load_public(args.signer),
                              signer_expires_days=args.signer_expires_days, expires_days=args.expires_days)


def _revoke(args: argparse.Namespace) -> KeyringDoc:
    from builder.fleet import keyring

    return keyring.revoke(args.dir, _keys(args.root), args.key_id, expires_days=args.expires_days)


def _rotate_root(args: argparse.Namespace) -> KeyringDoc:
    from builder.fleet import keyring

    return keyring.rotate_root(args.dir, _keys(args.old), _keys(args.new), threshold=args.threshold,
                               expires_days=args.expires_days)


def _renew(args: argparse.Namespace) -> KeyringDoc:
    from builder.fleet import keyring

    return keyring.renew(args.dir, _keys(args.root), expires_days=args.expires_days)


def _show(args: argparse.Namespace) -> None:
    from builder.fleet import keyring

    doc = keyring.read(args.dir)
    print(doc.model_dump_json(indent=2) if args.json else _describe(doc))


def _message(args: argparse.Namespace) -> None:
    from builder.fleet import keyring

    print(keyring.message(args.dir).model_dump_json())


def _describe(doc: KeyringDoc) -> str:
    now = datetime.now(UTC)

    def when(t: datetime | None) -> str:
        if t is None:
            return "with the document"
        return t.isoformat() + (" EXPIRED" if now >= t else "")

    lines = [f"keyring v{doc.version}, expires {when(doc.expires)}",
             f"root (threshold {doc.threshold}): {', '.join(sorted(doc.root))}"]
    for kid, e in sorted(doc.signers.items()):
        lines.append(f"signer {kid}: roles {', '.join(e.roles) or 'none'}, expires {when(e.expires)}")
    lines.append(f"revoked: {', '.join(doc.revoked) or 'none'}")
    return "\n".join(lines)
