"""edge-builder collect: the hard-example collector nodes upload to, and its per-node credentials."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from agent.cli import SubParsers

ACTIONS = ("serve", "add-node", "remove-node", "list-nodes")


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "collect",
        help="receive captured hard examples from nodes (and serve the review page)",
        description="`collect --dir DIR --listen HOST:PORT` serves the upload API nodes push their captured "
        "frames to (HTTP, or HTTPS with --tls-cert/--tls-key). `collect add-node NODE --dir DIR` prints a new "
        "token for NODE (stored hashed; put it in the node's [capture] credential_file); remove-node revokes it. "
        "With --review DATASET the same server offers the review page at /review (operator token as for the "
        "dashboard). See docs/FLYWHEEL.md.",
    )
    p.add_argument("action", nargs="?", default="serve", choices=ACTIONS, help="default: serve")
    p.add_argument("node", nargs="?", help="the node id (add-node, remove-node)")
    p.add_argument("--dir", type=Path, required=True, help="where uploads and nodes.json live")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT", help="default 127.0.0.1:8443")
    p.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--review", type=Path, default=None, metavar="DATASET",
                   help="a harvested dataset to review at /review")
    p.add_argument("--token", default=None, help="review login token (default: $EDGE_DASHBOARD_TOKEN, else random)")
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="another Host the review page is reached by; repeatable")
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="largest upload accepted (default 16 MB)")
    p.set_defaults(func=_run)


def _credentials(args: argparse.Namespace) -> int:
    from builder.flywheel.credentials import CredentialError, NodeCredentials

    creds = NodeCredentials(args.dir)
    try:
        if args.action == "list-nodes":
            print("\n".join(creds.nodes()) or "(no nodes)")
            return 0
        if not args.node:
            print(f"error: {args.action} needs a NODE", file=sys.stderr)
            return 2
        if args.action == "remove-node":
            return 0 if creds.remove(args.node) else 1
        print(creds.add(args.node))
        return 0
    except (ValueError, CredentialError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _serve(args: argparse.Namespace) -> int:
    import ssl

    from builder.dashboard.auth import TOKEN_ENV, AccessPolicy
    from builder.dashboard.server import tls_context
    from builder.flywheel.collector import Collector

    try:
        host, port = _listen(args.listen)
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        access = AccessPolicy(args.token or os.environ.get(TOKEN_ENV) or None, args.allow_host, tls=tls is not None)
        if args.review is not None and not (args.review / "data.yaml").is_file():
            raise ValueError(f"--review {args.review}: no data.yaml (run edge-builder harvest first)")
        col = Collector(args.dir, host, port, args.review, access, tls, int(args.max_upload_mb * 1024 * 1024))
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    col.start()
    print(f"collector listening on {col.url} (uploads to {args.dir}, {len(col.credentials.nodes())} nodes)",
          flush=True)
    if args.review is not None:
        print(f"review page: {col.access.login_url(col.url).replace('/?token=', '/review?token=')}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    col.stop()
    return 0


def _run(args: argparse.Namespace) -> int:
    return _serve(args) if args.action == "serve" else _credentials(args)
