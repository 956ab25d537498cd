"""edge-builder dashboard: the live fleet web page (MQTT -> Server-Sent Events), with rollout control."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from agent.cli import SubParsers


class _Refused(Exception):
    """A bad option: the message is printed, the command exits 2."""


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the live fleet dashboard (node table, charts, detections, rollout)",
        description="Subscribe to the fleet's MQTT topics and serve a live web page: every node with its "
        "model, latency, power and update state, the latest detections, and rollout control. The API needs "
        "a login token (printed at start as a URL, like Jupyter's); see docs/DASHBOARD.md.",
    )
    p.add_argument("--broker", required=True, help="MQTT broker URL: mqtt://host:port, mqtts://, ws://, wss:// "
                   "(user:password@ allowed)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port of the page (default 8080; 0 = any free)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--prefix", default=None, help="MQTT topic prefix (default edgefleet)")
    p.add_argument("--bundles", type=Path, nargs="*", default=[], metavar="DIR",
                   help="directories holding bundles (each a directory with manifest.json) offered for rollout "
                   "if signed by a trusted key")
    p.add_argument("--http-base", default=None, metavar="URL",
                   help="URL nodes fetch bundle files from: serving --upload DIR if given, else the --bundles "
                   "directories (needed to publish)")
    p.add_argument("--upload", type=Path, default=None, metavar="DIR",
                   help="copy a bundle into DIR/NAME/VERSION/ before announcing it (DIR is served at --http-base)")
    p.add_argument("--key", type=Path, default=None, metavar="KEYFILE",
                   help="fleet Ed25519 private key: publishing re-targets the manifest and signs it (needed to publish)")
    p.add_argument("--trusted-keys", type=Path, default=None, metavar="PATH",
                   help="public key file or keys directory a bundle must already be signed by to be offered "
                   "(default: the .pub beside --key)")
    p.add_argument("--token", default=None,
                   help="login token (at least 16 characters; default: $EDGE_DASHBOARD_TOKEN, else a random one "
                   "printed at start). Prefer the environment variable: argv is visible to other users")
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="another Host/Origin the page is reached by (a DNS name, a proxy's host); repeatable")
    p.add_argument("--audit-log", type=Path, default=None, metavar="FILE",
                   help="append-only JSON-lines audit log (default $XDG_STATE_HOME/edge-fleet/dashboard-audit.jsonl)")
    p.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--ca-file", type=Path, default=None, help="CA certificate for a TLS broker")
    p.add_argument("--history", type=int, default=180, help="chart points kept per node (default 180)")
    p.add_argument("--rollout-dir", type=Path, default=None, metavar="DIR",
                   help="staged rollouts' state directory, shared with `edge-builder rollout` (default "
                   "$EDGE_ROLLOUT_DIR or ~/.local/state/edge-builder/rollouts); unfinished ones are resumed")
    p.add_argument("--review", type=Path, default=None, metavar="DATASET",
                   help="serve the review tab (/review) for a dataset made by `edge-builder harvest` "
                   "(docs/FLYWHEEL.md)")
    p.set_defaults(func=_run)


def _check_paths(args: argparse.Namespace) -> None:
    for d in args.bundles:
        if not d.is_dir():
            raise _Refused(f"--bundles {d}: not a directory")
    for flag, path in (("--key", args.key), ("--trusted-keys", args.trusted_keys), ("--tls-cert", args.tls_cert),
                       ("--tls-key", args.tls_key)):
        if path is not None and not path.exists():
            raise _Refused(f"{flag} {path}: no such file")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise _Refused("--tls-cert and --tls-key go together")


def _security(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(AccessPolicy, AuditLog, ssl context or None) from the options; _Refused when unusable."""
    import ssl

    from builder.dashboard.audit import AuditLog, default_path
    from builder.dashboard.auth import TOKEN_ENV, AccessPolicy
    from builder.dashboard.server import tls_context

    tls = None
    if args.tls_cert is not None:
        try:
            tls = tls_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise _Refused(f"--tls-cert/--tls-key: {exc}") from None
    try:
        access = AccessPolicy(args.token or os.environ.get(TOKEN_ENV) or None, args.allow_host, tls=tls is not None)
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    path = args.audit_log or default_path()
    try:
        audit = AuditLog(path)
    except OSError as exc:
        raise _Refused(f"--audit-log {path}: {exc.strerror or exc}") from None
    return access, audit, tls


def _check_broker(args: argparse.Namespace) -> None:
    """A malformed broker URL is refused before anything is created (the audit log included)."""
    from builder.dashboard.link import LinkError, make_client

    try:
        make_client(args.broker, "edge-dashboard-check", args.ca_file)
    except LinkError as exc:
        raise _BadBroker(str(exc)) from None


class _BadBroker(Exception):
    pass


def _run(args: argparse.Namespace) -> int:
    from agent.protocol.topics import DEFAULT_PREFIX, Topics
    from builder.dashboard.link import FleetLink, LinkError
    from builder.dashboard.rollout import PublishConfig
    from builder.dashboard.rollouts import StagedRollouts
    from builder.dashboard.server import Dashboard
    from builder.dashboard.state import FleetState

    try:
        topics = Topics(args.prefix or DEFAULT_PREFIX)
        _check_paths(args)
        _check_broker(args)
        access, audit, tls = _security(args)
    except (ValueError, _Refused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except _BadBroker as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = FleetState(topics, history=args.history)
    try:
        link = FleetLink(args.broker, state, ca_file=args.ca_file).start()
    except LinkError as exc:
        audit.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg = PublishConfig(args.broker, topics, http_base=args.http_base, key=args.key, upload_dir=args.upload,
                        ca_file=args.ca_file, trusted_keys=args.trusted_keys)
    rollouts = StagedRollouts(cfg, args.rollout_dir).start()  # adopts an unfinished rollout nobody runs
    try:
        dash = Dashboard(state, link, args.bundles, cfg, host=args.host, port=args.port, access=access,
                         audit=audit, tls=tls, rollouts=rollouts, mounted=_review_tab(args.review, access))
    except OSError as exc:
        rollouts.stop()
        link.stop()
        audit.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return _serve(dash, args, cfg)


def _review_tab(dataset: Path | None, access: Any) -> list[Any]:
    if dataset is None:
        return []
    from builder.flywheel.review_http import ReviewRoutes

    return [ReviewRoutes(dataset, access)]


def _serve(dash: Any, args: argparse.Namespace, cfg: Any) -> int:
    import signal
    import time

    signal.signal(signal.SIGTERM, _interrupt)  # systemd/tests stop us with SIGTERM: shut down cleanly
    try:
        dash.start()
        _announce(dash, args, cfg)
        while True:  # short naps: a SIGTERM delivered to another thread only runs our handler when we wake
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        dash.stop()
    return 0


def _announce(dash: Any, args: argparse.Namespace, cfg: Any) -> None:
    print(f"dashboard: {dash.url}/  (broker {args.broker}, prefix {cfg.topics.prefix}, "
          f"audit log {dash.audit.path})", flush=True)
    if dash.access.generated:  # Jupyter's way: the one URL that logs in (a token the operator set stays unprinted)
        print(f"open to log in: {dash.login_url}", flush=True)
    if dash.tls is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: plain HTTP on {args.host}: the token crosses the network in clear; use --tls-cert/--tls-key "
              "or a TLS reverse proxy (docs/DASHBOARD.md)", file=sys.stderr)
    running = [r for r in dash.rollouts.view()["rollouts"] if r["runner"] and r["runner"]["ours"]]
    for r in running:
        print(f"resuming rollout {r['id']} ({r['phase']})", flush=True)
    if dash.rollouts.link_problem:
        print(f"note: {dash.rollouts.link_problem}", file=sys.stderr)
    if args.bundles and cfg.problem():
        print(f"note: rollout is disabled: {cfg.problem()}", file=sys.stderr)
    elif args.bundles and cfg.keyring() is None:
        print("note: no trusted keys (--trusted-keys, or the .pub beside --key): every bundle is refused",
              file=sys.stderr)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
