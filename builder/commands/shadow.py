"""edge-builder shadow start|stop|status: run a candidate bundle beside a node's live model (docs/SHADOW.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import SubParsers


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, help="node id")
    p.add_argument("--broker", required=True, help="broker URL, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--prefix", default="edgefleet", help="MQTT topic prefix (default edgefleet)")
    p.add_argument("--username", help="broker username")
    p.add_argument("--password", help="broker password")
    p.add_argument("--ca", type=Path, help="CA certificate for mqtts://")


def register(sub: SubParsers) -> None:
    p = sub.add_parser("shadow", help="run a candidate bundle beside a node's live model and read its agreement",
                       description="Sign a candidate bundle for one node and ask it (retained, on "
                       "{prefix}/node/ID/shadow) to run it on a sample of its live frames beside the live model, "
                       "which it never replaces; the node reports the agreement on .../shadow/report. "
                       "See docs/SHADOW.md.")
    rs = p.add_subparsers(dest="shadow_command", metavar="ACTION", required=True)
    s = rs.add_parser("start", help="sign the candidate, place it for download and send the request")
    s.add_argument("bundle", type=Path, help="candidate bundle directory")
    _broker_args(s)
    s.add_argument("--key", type=Path, required=True, help="private signing key (edge-builder keygen)")
    s.add_argument("--http-base", metavar="URL", required=True,
                   help="URL nodes fetch files from (of the bundle, or of --upload DIR)")
    s.add_argument("--upload", type=Path, metavar="DIR", help="copy the bundle into DIR/<name>/<version>/ first")
    s.add_argument("--every", type=int, default=1, metavar="N", help="consider every Nth live frame (default 1)")
    s.add_argument("--rate", type=float, default=1.0, metavar="HZ", help="shadow frames per second at most (1)")
    s.add_argument("--max-slowdown", type=float, default=0.10, metavar="F",
                   help="skip shadow frames while the live FPS loss is estimated above F (default 0.10)")
    s.add_argument("--frames", type=int, default=None, metavar="N", help="done after comparing N frames")
    s.add_argument("--duration", type=float, default=None, metavar="S", help="done after S seconds")
    s.add_argument("--id", default=None, help="request id (default: random)")
    s.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for the run to finish and print its report (exit 1 if refused)")
    s.set_defaults(func=_start)
    st = rs.add_parser("status", help="print the node's latest shadow report")
    _broker_args(st)
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    st.set_defaults(func=_status)
    sp = rs.add_parser("stop", help="clear the request (the empty retained message): the node unloads the candidate")
    _broker_args(sp)
    sp.set_defaults(func=_stop)


def _auth(args: argparse.Namespace) -> dict[str, object]:
    return {"username": args.username, "password": args.password, "ca_file": args.ca}


def _start(args: argparse.Namespace) -> int:
    from agent.protocol.shadow import ShadowSampling
    from builder.fleet.publish import PublishError
    from builder.fleet.shadow import send_request, shadow_request, wait_report

    try:
        sampling = ShadowSampling(every_nth=args.every, max_rate_hz=args.rate, max_live_slowdown=args.max_slowdown)
        req = shadow_request(args.bundle, args.node, args.key, args.http_base, upload_dir=args.upload,
                             sampling=sampling, max_frames=args.frames, duration_s=args.duration, request_id=args.id)
        topic = send_request(args.broker, args.node, req, args.prefix, **_auth(args))
        m = req.candidate
        print(f"requested  shadow run {req.request_id} on {args.node} ({topic}, retained)")
        print(f"candidate  at {m.base_url}")
        if args.wait > 0:
            rep = wait_report(args.broker, args.node, req.request_id, {"done", "rejected", "failed"}, args.wait,
                              args.prefix, **_auth(args))
            _print(rep)
            return 0 if rep.state.value == "done" else 1
    except (PublishError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from builder.fleet.publish import PublishError
    from builder.fleet.shadow import read_report

    try:
        rep = read_report(args.broker, args.node, args.prefix, timeout=5.0, **_auth(args))
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if rep is None:
        print(f"{args.node}: no shadow report")
        return 1
    if args.json:
        print(rep.model_dump_json(indent=2))
    else:
        _print(rep)
    return 0


def _stop(args: argparse.Namespace) -> int:
    from builder.fleet.publish import PublishError
    from builder.fleet.shadow import send_request

    try:
        topic = send_request(args.broker, args.node, None, args.prefix, **_auth(args))
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"cleared    {topic}")
    return 0


def _print(rep: object) -> None:
    from agent.protocol.shadow import ShadowReport

    assert isinstance(rep, ShadowReport)
    cand = f"{rep.candidate.name} v{rep.candidate.version}" if rep.candidate else "-"
    live = f"{rep.live.name} v{rep.live.version}" if rep.live else "-"
    print(f"{rep.node}: shadow run {rep.request_id} {rep.state.value}{f' ({rep.reason})' if rep.reason else ''}")
    print(f"  candidate {cand} beside live {live}, {rep.shadow_frames} shadow frames in {rep.window_s:.0f} s, "
          f"skipped {rep.skipped_budget} (budget) {rep.skipped_busy} (busy), live slowdown {rep.live_slowdown}")
    a = rep.agreement
    if a is None:
        return
    print(f"  agreement over {a.frames} frames: matched {a.matched} of {a.live} live / {a.candidate} candidate "
          f"boxes, precision {_f(a.precision)} recall {_f(a.recall)} F1 {_f(a.f1)} mean IoU {_f(a.mean_iou)}")
    for name, c in a.per_class.items():
        print(f"    {name:<12} live {c.live:>5} cand {c.candidate:>5} matched {c.matched:>5} "
              f"precision {_f(c.precision)} recall {_f(c.recall)}")
    print(f"  scores p10/p50/p90: live {a.live_scores.p10}/{a.live_scores.p50}/{a.live_scores.p90}, "
          f"candidate {a.candidate_scores.p10}/{a.candidate_scores.p50}/{a.candidate_scores.p90}")
    if rep.candidate_latency is not None:
        print(f"  candidate latency p50 {rep.candidate_latency.p50_ms} ms p95 {rep.candidate_latency.p95_ms} ms")


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
