"""edge-builder keygen / sign: Ed25519 keys for bundle signatures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair (KEY and KEY.pub)")
    p.add_argument("key", type=Path, help="private key file to create, e.g. keys/fleet.key (mode 0600)")
    p.set_defaults(func=_keygen)

    s = sub.add_parser("sign", help="sign (or re-sign) a bundle directory's manifest.json")
    s.add_argument("bundle", type=Path, help="bundle directory")
    s.add_argument("--key", type=Path, required=True, help="private key file from keygen")
    s.set_defaults(func=_sign)


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
        bundle = Bundle.load(args.bundle)  # checks every file's sha256 before we vouch for it
        sign_bundle(args.bundle, key)
    except (BundleError, SignatureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"signed {bundle.manifest.name} v{bundle.manifest.version} with key {key.key_id}")
    return 0
