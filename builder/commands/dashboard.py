"""edge-builder dashboard: the live fleet web page (MQTT -> Server-Sent Events), with rollout control."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the live fleet dashboard (node table, charts, detections, rollout)",
        description="Subscribe to the fleet's MQTT topics and serve a live web page: every node with its "
        "model, latency, power and update state, the latest detections, and rollout control.",
    )
    p.add_argument("--broker", required=True, help="MQTT broker URL: mqtt://host:port, mqtts://, ws://, wss:// "
                   "(user:password@ allowed)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port of the page (default 8080; 0 = any free)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; rollout control has no login, expose with care)")
    p.add_argument("--prefix", default=None, help="MQTT topic prefix (default edgefleet)")
    p.add_argument("--bundles", type=Path, nargs="*", default=[], metavar="DIR",
                   help="directories holding bundles (each a directory with manifest.json) offered for rollout")
    p.add_argument("--http-base", default=None, metavar="URL",
                   help="URL nodes fetch bundle files from: serving --upload DIR if given, else the --bundles "
                   "directories (needed to publish)")
    p.add_argument("--upload", type=Path, default=None, metavar="DIR",
                   help="copy a bundle into DIR/NAME/VERSION/ before announcing it (DIR is served at --http-base)")
    p.add_argument("--key", type=Path, default=None, metavar="KEYFILE",
                   help="fleet Ed25519 private key: publishing re-targets the manifest and signs it (needed to publish)")
    p.add_argument("--ca-file", type=Path, default=None, help="CA certificate for a TLS broker")
    p.add_argument("--history", type=int, default=180, help="chart points kept per node (default 180)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import signal
    import time

    from agent.protocol.topics import DEFAULT_PREFIX, Topics
    from builder.dashboard.link import FleetLink, LinkError
    from builder.dashboard.rollout import PublishConfig
    from builder.dashboard.server import Dashboard
    from builder.dashboard.state import FleetState

    try:
        topics = Topics(args.prefix or DEFAULT_PREFIX)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for d in args.bundles:
        if not d.is_dir():
            print(f"error: --bundles {d}: not a directory", file=sys.stderr)
            return 2
    if args.key is not None and not args.key.is_file():
        print(f"error: --key {args.key}: no such file", file=sys.stderr)
        return 2
    state = FleetState(topics, history=args.history)
    try:
        link = FleetLink(args.broker, state, ca_file=args.ca_file).start()
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        cfg = PublishConfig(args.broker, topics, http_base=args.http_base, key=args.key, upload_dir=args.upload,
                            ca_file=args.ca_file)
        dash = Dashboard(state, link, args.bundles, cfg, host=args.host, port=args.port)
    except OSError as exc:
        link.stop()
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    dash.start()
    signal.signal(signal.SIGTERM, _interrupt)  # systemd/tests stop us with SIGTERM: shut down cleanly
    print(f"dashboard: {dash.url}/  (broker {args.broker}, prefix {topics.prefix})", flush=True)
    if args.bundles and cfg.problem():
        print(f"note: rollout is disabled: {cfg.problem()}", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        dash.stop()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
