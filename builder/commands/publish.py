"""edge-builder publish: upload a bundle and announce it (signed, retained) to all / a group / a node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import SubParsers

if TYPE_CHECKING:
    from agent.protocol.manifest import Target


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "publish",
        help="place a bundle where nodes fetch it and publish its signed announcement (retained)",
        description="Re-target and sign the bundle's manifest, copy the files where the nodes' HTTP server "
        "serves them (--upload DIR) or use them where they already are (--http-base URL), and publish the "
        "announcement retained on {prefix}/announce/all, .../group/G or .../node/N. The manifest expires "
        "after --expires-days (nodes refuse expired ones); --refresh re-signs the live announcement of --target "
        "with a new expiry (same version and files) before it runs out.",
    )
    p.add_argument("bundle", type=Path, nargs="?",
                   help="bundle directory (manifest.json + model files); not with --refresh")
    p.add_argument("--broker", required=True, help="broker URL, e.g. mqtt://127.0.0.1:1883 or mqtts://host:8883")
    p.add_argument("--http-base", metavar="URL",
                   help="URL nodes fetch files from: of the bundle directory itself, or with --upload the URL "
                   "that serves DIR (files then live under URL/<name>/<version>/)")
    p.add_argument("--upload", type=Path, metavar="DIR",
                   help="copy the bundle into DIR/<name>/<version>/ for an HTTP server serving DIR")
    p.add_argument("--target", default="all", help="all | group:NAME | node:ID (default: all)")
    p.add_argument("--key", type=Path, required=True, help="private signing key (edge-builder keygen)")
    p.add_argument("--expires-days", type=float, default=30.0, metavar="N",
                   help="the manifest expires N days from now (default 30); re-publish or --refresh before that")
    p.add_argument("--manifest-version", type=int, choices=(1, 2), default=2,
                   help="manifest schema: 2 (default) lists each backend's files so a node fetches only what it "
                   "runs; 1 for agents older than schema 2 (they refuse 2; every node fetches every file)")
    p.add_argument("--refresh", action="store_true",
                   help="re-sign the retained announcement of --target with a new expiry (needs the key that "
                   "signed it); --upload DIR also rewrites the server's copy of its manifest")
    p.add_argument("--prefix", default=None, help="MQTT topic prefix (default: edgefleet)")
    p.add_argument("--username", help="broker username")
    p.add_argument("--password", help="broker password")
    p.add_argument("--ca", type=Path, help="CA certificate for mqtts://")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent.protocol.manifest import Target
    from agent.protocol.topics import DEFAULT_PREFIX
    from builder.fleet.publish import PublishError, publish_bundle

    try:
        target = Target.parse(args.target)
    except ValueError as exc:
        print(f"error: --target: {exc}", file=sys.stderr)
        return 2
    if args.refresh:
        return _refresh(args, target)
    if args.bundle is None:
        print("error: a bundle directory is required (or --refresh)", file=sys.stderr)
        return 2
    if args.http_base is None:
        print("error: --http-base URL is required (the URL of the bundle, or of --upload DIR)", file=sys.stderr)
        return 2
    try:
        res = publish_bundle(args.bundle, args.broker, target, args.key, http_base=args.http_base,
                             upload_dir=args.upload, prefix=args.prefix or DEFAULT_PREFIX,
                             username=args.username, password=args.password, ca_file=args.ca,
                             expires_days=args.expires_days, manifest_version=args.manifest_version)
    except (PublishError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if res.uploaded_to:
        print(f"uploaded   {res.uploaded_to}")
    print(f"published  {res.name} v{res.version} (key {res.key_id}) for {target}")
    print(f"expires    {res.expires.isoformat() if res.expires else '-'}")
    print(f"topic      {res.topic} (retained)")
    print(f"files at   {res.base_url}")
    return 0


def _refresh(args: argparse.Namespace, target: Target) -> int:
    from agent.protocol.topics import DEFAULT_PREFIX
    from builder.fleet.publish import PublishError, refresh_announcement

    if args.bundle is not None:
        print("error: --refresh takes no bundle: it re-signs the announcement already on --target", file=sys.stderr)
        return 2
    try:
        res = refresh_announcement(args.broker, target, args.key, expires_days=args.expires_days,
                                   prefix=args.prefix or DEFAULT_PREFIX, upload_dir=args.upload,
                                   username=args.username, password=args.password, ca_file=args.ca)
    except (PublishError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"refreshed  {res.name} v{res.version} (key {res.key_id}) for {target}")
    print(f"expires    {res.expires.isoformat() if res.expires else '-'}")
    print(f"topic      {res.topic} (retained)")
    return 0
