"""edge-builder rollout start|status|pause|resume|abort: staged, health-gated rollouts (docs/ROLLOUTS.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import SubParsers

if TYPE_CHECKING:
    from builder.rollout.engine import RolloutEngine
    from builder.rollout.link import RolloutLink
    from builder.rollout.state import RolloutSettings, RolloutState, ShadowGateSettings
    from builder.rollout.store import RolloutStore

EXIT = {"completed": 0, "halted": 3, "aborted": 4, "paused": 0, "running": 0}


def register(sub: SubParsers) -> None:
    p = sub.add_parser("rollout", help="roll a bundle out wave by wave, gated on each node's health",
                       description="Announce a bundle per node (announce/node/ID), wave by wave; a wave advances "
                       "when enough of its nodes committed and stayed healthy for the soak time, and halts the "
                       "rollout when too many fail. See docs/ROLLOUTS.md.")
    rs = p.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    s = rs.add_parser("start", help="start (or, same bundle, resume) a rollout and run it to its end")
    s.add_argument("bundle", type=Path, help="bundle directory (manifest.json + model files)")
    s.add_argument("--broker", required=True, help="broker URL, e.g. mqtt://127.0.0.1:1883")
    s.add_argument("--key", type=Path, required=True, help="private signing key (edge-builder keygen)")
    s.add_argument("--http-base", metavar="URL", required=True,
                   help="URL nodes fetch files from (of the bundle, or of --upload DIR)")
    s.add_argument("--upload", type=Path, metavar="DIR", help="copy the bundle into DIR/<name>/<version>/ first")
    s.add_argument("--waves", required=True, metavar="SPEC", help="comma list of counts, percentages, rest: 1,25%%,rest")
    s.add_argument("--target", default="all", help="all | group:NAME (default all)")
    s.add_argument("--manifest-version", type=int, choices=(1, 2), default=2,
                   help="manifest schema to announce: 2 (default) lets each node fetch only its backend's files; "
                   "1 for nodes older than schema 2 (they fetch every file)")
    _gate_flags(s)
    s.add_argument("--rollback-on-halt", action="store_true",
                   help="when a wave halts the rollout, send `rollback` to its nodes that run the new version")
    s.add_argument("--discover", type=float, default=3.0, metavar="S",
                   help="seconds to listen for the fleet's retained state before planning (default 3)")
    s.add_argument("--prefix", default="edgefleet", help="MQTT topic prefix (default edgefleet)")
    s.set_defaults(func=_start)
    st = rs.add_parser("status", help="show the rollout's waves, nodes and why it stopped")
    st.add_argument("--json", action="store_true", help="print the record as JSON")
    st.set_defaults(func=_status)
    for name, helptext in (("pause", "hold the rollout before its next wave"),
                           ("resume", "resume a paused rollout, or run an abandoned one again")):
        q = rs.add_parser(name, help=helptext)
        q.set_defaults(func=_control, action=name)
    a = rs.add_parser("abort", help="stop the rollout; withdraw its pending announcements")
    a.add_argument("--rollback", action="store_true", help="also roll back nodes that run the new version")
    a.set_defaults(func=_control, action="abort")
    for q in (s, rs.choices["resume"], a):
        q.add_argument("--username", help="broker user (recorded; resume/abort reuse it)")
        q.add_argument("--password", default=None, help="broker password (default $EDGE_MQTT_PASSWORD; never recorded)")
        q.add_argument("--ca", type=Path, default=None, help="CA certificate for mqtts:// (recorded)")
    for q in (st, *[rs.choices[n] for n in ("pause", "resume", "abort")], s):
        q.add_argument("--state-dir", type=Path, default=None,
                       help="where rollouts are recorded (default $EDGE_ROLLOUT_DIR or ~/.local/state/edge-builder/rollouts)")
        q.add_argument("--id", default=None, help="rollout id (default: the newest)")


def _start(args: argparse.Namespace) -> int:
    import time

    from builder.rollout.gates import Thresholds
    from builder.rollout.plan import PlanError, create
    from builder.rollout.state import RolloutSettings
    from builder.rollout.store import RolloutStore, RolloutStoreError
    from builder.rollout.waves import WaveSpecError, parse_waves

    store = RolloutStore(args.state_dir)
    try:
        parse_waves(args.waves)
        old = store.load(args.id) if (args.id or (store.root / "current").exists()) else None
    except (WaveSpecError, RolloutStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = RolloutSettings(bundle=str(args.bundle.resolve()), broker=args.broker, key=str(args.key.resolve()),
                               http_base=args.http_base, upload=str(args.upload.resolve()) if args.upload else None,
                               prefix=args.prefix, target=args.target, waves_spec=args.waves,
                               username=args.username, ca=str(args.ca.resolve()) if args.ca else None,
                               rollback_on_halt=args.rollback_on_halt, manifest_version=args.manifest_version,
                               shadow=_shadow_gate(args))
    if old is not None and not old.done:
        if old.settings.bundle != settings.bundle:
            print(f"error: rollout {old.id} of {old.settings.bundle} is not over ({old.phase}): "
                  "resume or abort it first", file=sys.stderr)
            return 1
        print(f"resuming rollout {old.id}")
        return _run(store, old, password=_password(args))
    th = Thresholds(success=args.success_threshold, failure=args.failure_threshold, soak_s=args.soak,
                    max_latency_ratio=args.max_latency_ratio, max_error_rate=args.max_error_rate,
                    max_detection_rate_change=args.max_detection_rate_change, wave_timeout_s=args.wave_timeout)
    try:
        link = _link(settings, _password(args))
        time.sleep(max(0.0, args.discover))
        state = create(settings, th, link.known())
    except (PlanError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    store.save(state)
    store.set_current(state.id)
    print(f"rollout {state.id}")
    return _run(store, state, link)


def _gate_flags(s: argparse.ArgumentParser) -> None:
    """The thresholds, soak and gates of `rollout start` (docs/ROLLOUTS.md)."""
    s.add_argument("--success-threshold", type=float, default=1.0, metavar="F",
                   help="fraction of a wave's nodes that must commit and stay healthy (default 1.0)")
    s.add_argument("--failure-threshold", type=float, default=0.0, metavar="F",
                   help="fraction of a wave's nodes failing above which the rollout halts (default 0: any)")
    s.add_argument("--soak", type=float, default=30.0, metavar="S", help="seconds a node must stay healthy (default 30)")
    s.add_argument("--max-latency-ratio", type=float, default=1.5, metavar="R",
                   help="p95 invoke latency after / before, at most (default 1.5)")
    s.add_argument("--max-error-rate", type=float, default=0.05, metavar="F",
                   help="inference errors / frames after the update, at most (default 0.05)")
    s.add_argument("--max-detection-rate-change", type=float, default=None, metavar="F",
                   help="relative change of detections per second, at most (e.g. 0.5; default: not gated)")
    s.add_argument("--wave-timeout", type=float, default=900.0, metavar="S",
                   help="a node without a result this long after its announcement fails (default 900)")
    s.add_argument("--shadow-frames", type=int, default=None, metavar="N",
                   help="shadow-run each node on the new version for N compared frames before announcing it; "
                   "announce only when it agrees with the live model (docs/SHADOW.md; default: no shadow step)")
    s.add_argument("--shadow-min-f1", type=float, default=0.8, metavar="F",
                   help="agreement (F1 of matched boxes) the shadow run must reach (default 0.8)")
    s.add_argument("--shadow-timeout", type=float, default=300.0, metavar="S",
                   help="seconds a node has to report a passing shadow run (default 300)")


def _shadow_gate(args: argparse.Namespace) -> ShadowGateSettings | None:
    from builder.rollout.state import ShadowGateSettings

    if args.shadow_frames is None:
        return None
    return ShadowGateSettings(frames=args.shadow_frames, min_f1=args.shadow_min_f1, timeout_s=args.shadow_timeout)


def _password(args: argparse.Namespace) -> str | None:
    import os

    return getattr(args, "password", None) or os.environ.get("EDGE_MQTT_PASSWORD") or None


def _link(s: RolloutSettings, password: str | None) -> RolloutLink:
    from agent.protocol.topics import Topics
    from builder.rollout.link import RolloutLink

    return RolloutLink(s.broker, Topics(s.prefix), ca_file=Path(s.ca) if s.ca else None, username=s.username,
                       password=password).start()


def _engine(store: RolloutStore, state: RolloutState, link: RolloutLink | None = None,
            password: str | None = None) -> tuple[RolloutEngine, RolloutLink]:
    from builder.rollout.announce import Announcer
    from builder.rollout.engine import RolloutEngine

    s = state.settings
    link = link or _link(s, password)
    return RolloutEngine(state, store, link, Announcer.for_rollout(s), claim=store.claim(state.id)), link


def _run(store: RolloutStore, state: RolloutState, link: RolloutLink | None = None,
         password: str | None = None) -> int:
    from builder.fleet.publish import PublishError
    from builder.rollout.link import LinkError
    from builder.rollout.store import ClaimError

    try:
        engine, link = _engine(store, state, link, password)
        assert engine.claim is not None
        engine.claim.acquire()
    except (ClaimError, LinkError, PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if link is not None:
            link.stop()
        return 1
    engine.on_event = lambda line: print(line, flush=True)
    try:
        final = engine.run()
    except KeyboardInterrupt:
        print("interrupted: the rollout stays recorded; `edge-builder rollout resume` carries on", file=sys.stderr)
        return 130
    except (ClaimError, LinkError, PublishError) as exc:  # the record stays: `rollout resume` carries on
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.claim.release()
        link.stop()
    print(f"rollout {final.id}: {final.phase}" + (f" ({final.reason})" if final.reason else ""))
    return EXIT.get(final.phase, 1)


def _load(args: argparse.Namespace) -> tuple[RolloutStore, RolloutState] | None:
    from builder.rollout.store import RolloutStore, RolloutStoreError

    store = RolloutStore(args.state_dir)
    try:
        return store, store.load(args.id)
    except RolloutStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    import json

    loaded = _load(args)
    if loaded is None:
        return 1
    store, st = loaded
    runner = store.claim(st.id).live_holder()
    if args.json:
        print(json.dumps({**json.loads(st.model_dump_json()), "runner": runner}, indent=2))
        return 0
    print(f"rollout  {st.id}: {st.name} v{st.version} to {st.settings.target}, waves {st.settings.waves_spec}")
    print(f"phase    {st.phase}" + (f" ({st.reason})" if st.reason else ""))
    print(f"wave     {min(st.current_wave + 1, len(st.waves))} of {len(st.waves)}")
    idle = "none" + (" (`edge-builder rollout resume` carries on)" if not st.done else "")
    print(f"runner   {runner['owner'] + ' pid ' + str(runner['pid']) if runner else idle}")
    for p in sorted(st.nodes.values(), key=lambda p: (p.wave, p.node)):
        print(f"  w{p.wave + 1}  {p.node:<20} {p.status:<10} {p.reason or ''}")
    for line in st.events[-5:]:
        print(f"  {line}")
    return 0


def _control(args: argparse.Namespace) -> int:
    import time

    from builder.fleet.publish import PublishError
    from builder.rollout.link import LinkError
    from builder.rollout.state import set_phase

    loaded = _load(args)
    if loaded is None:
        return 1
    store, st = loaded
    rollback = bool(getattr(args, "rollback", False))
    runner = store.claim(st.id).live_holder()
    if runner is not None:  # the live runner applies it at its next tick
        store.request(st.id, args.action, rollback)
        print(f"{args.action} requested from the runner {runner['owner']} of {st.id}")
        return 0
    if st.done:
        print(f"rollout {st.id} is already {st.phase}", file=sys.stderr)
        return 1
    if args.action == "pause":
        set_phase(st, "paused", "paused by the operator (no runner)", time.time())
        store.save(st)
        print(f"rollout {st.id}: paused")
        return 0
    if args.action == "resume":
        if st.phase == "paused":
            set_phase(st, "running", None, time.time())
        print(f"resuming rollout {st.id}")
        return _run(store, _override(st, args), password=_password(args))
    try:
        engine, link = _engine(store, _override(st, args), password=_password(args))
    except (LinkError, PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        time.sleep(2.0)  # the nodes' retained state first: rollback goes only to nodes that run the version
        engine.abort(rollback)
    finally:
        link.stop()
    print(f"rollout {st.id}: aborted")
    return 0


def _override(st: RolloutState, args: argparse.Namespace) -> RolloutState:
    """resume/abort --username/--ca replace the recorded ones."""
    update = {k: v for k, v in (("username", args.username), ("ca", str(args.ca) if args.ca else None)) if v}
    if update:
        st.settings = st.settings.model_copy(update=update)
    return st
