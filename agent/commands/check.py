"""edge-agent check: validate the config, list Edge TPUs, probe the camera, the broker and the model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "check",
        help="validate the config, list Edge TPUs, probe the camera and the broker (and the bundle)",
        description="Each check prints OK, WARN or FAIL with the reason. Exit status 0 when nothing failed, "
        "1 when a check failed, 2 when the config itself is invalid.",
    )
    p.add_argument("--config", "-c", type=Path, default=None, help="TOML config file")
    p.add_argument("--bundle", type=Path, default=None, help="also load this bundle and run one frame")
    p.add_argument("--skip-camera", action="store_true", help="do not open the camera")
    p.add_argument("--skip-broker", action="store_true", help="do not connect to the broker")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per probe (10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import logging

    from agent.config import ConfigError, load_config

    logging.basicConfig(level=logging.ERROR)  # the probes' own retry warnings would repeat the report

    try:
        cfg = load_config(args.config, **({"bundle": args.bundle} if args.bundle else {}))
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"ok": False, "config": {"status": "FAIL", "detail": str(exc)}}))
        else:
            print(f"FAIL config: {exc}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {
        "config": {"status": "OK", "detail": f"node {cfg.node_id}, groups {cfg.groups or '-'}"}
    }

    def report(name: str, status: str, detail: str, **extra: Any) -> None:
        results[name] = {"status": status, "detail": detail, **extra}
        if not args.json:
            print(f"{status:<4} {name}: {detail}", flush=True)

    if not args.json:
        print(f"OK   config: {results['config']['detail']}", flush=True)
    report(*_check_tpus(cfg))
    if not args.skip_camera:
        report(*_check_camera(cfg, args.timeout))
    if not args.skip_broker:
        report(*_check_broker(cfg, args.timeout))
    report(*_check_keys(cfg))
    if cfg.bundle is not None:
        report(*_check_bundle(cfg))
    ok = all(r["status"] != "FAIL" for r in results.values())
    if args.json:
        print(json.dumps({"ok": ok, **results}))
    return 0 if ok else 1


def _check_tpus(cfg: Any) -> tuple[str, str, str]:
    from agent.inference.backends.base import BackendError
    from agent.inference.backends.edgetpu import enumerate_tpus, select_device

    t = cfg.backend.edgetpu
    found = enumerate_tpus(t.sysfs_root, t.dev_root)
    listing = ", ".join(f"{d.spec} ({d.path}{', ' + d.detail if d.detail else ''})" for d in found) or "none"
    if cfg.backend.prefer == "cpu" or not t.enabled:
        return "edgetpu", "OK", f"not used (CPU backend); present: {listing}"
    try:
        dev = select_device(t.device, found)
    except BackendError as exc:
        return "edgetpu", "WARN", f"{exc}; the CPU model will run (degraded)"
    return "edgetpu", "OK", f"will use {t.device or dev.spec}; present: {listing}"


def _check_broker(cfg: Any, timeout: float) -> tuple[str, str, str]:
    """While the agent runs, its own link status (daemon-status.json): connecting beside it with the node's
    credentials would take over its session (the shipped broker config forces the node's client id)."""
    from agent.service.mqtt import probe_broker
    from agent.service.status_file import StatusUnreadable, describe, running_daemon

    try:
        st = running_daemon(cfg.state_dir)
    except StatusUnreadable as exc:
        return "broker", "WARN", f"not probed: {exc} (the agent may be running; run as root or the service user)"
    if st is not None:
        connected, line = describe(st)
        return "broker", "OK" if connected else "FAIL", line
    err = probe_broker(cfg.broker, timeout=timeout)
    return "broker", "FAIL" if err else "OK", err or f"connected to {cfg.broker.url}"


def _check_camera(cfg: Any, timeout: float) -> tuple[str, str, str]:
    from agent.camera.capture import Camera

    cam = Camera(cfg.camera).start()
    try:
        t0 = time.monotonic()
        frame = cam.get(timeout=timeout)
        if frame is None:
            return "camera", "FAIL", f"{cam.description}: no frame within {timeout:g} s ({cam.last_error or cam.state.value})"
        h, w = frame.image.shape[:2]
        return "camera", "OK", f"{cam.description}: {w}x{h}, first frame after {time.monotonic() - t0:.2f} s"
    finally:
        cam.stop()


def _check_keys(cfg: Any) -> tuple[str, str, str]:
    from agent.security.signing import Keyring, SignatureError

    d = cfg.trusted_keys_dir
    if not d.is_dir():
        return "keys", "FAIL", f"trusted keys dir {d} does not exist: no bundle can be verified"
    try:
        ring = Keyring.load(d)
    except SignatureError as exc:
        return "keys", "FAIL", str(exc)
    if not ring.keys:
        return "keys", "FAIL", f"no *.pub keys in {d}"
    return "keys", "OK", f"{len(ring.keys)} pinned key(s): {', '.join(sorted(ring.keys))}"


def _check_bundle(cfg: Any) -> tuple[str, str, str]:
    import numpy as np

    from agent.inference.engine import Engine, EngineError
    from agent.security.bundle import Bundle, BundleError
    from agent.security.signing import Keyring, SignatureError

    try:
        ring = Keyring.load(cfg.trusted_keys_dir) if cfg.trusted_keys_dir.is_dir() else None
        bundle = Bundle.load(cfg.bundle, ring)
        engine = Engine.load(bundle, cfg)
    except (BundleError, SignatureError, EngineError) as exc:
        return "bundle", "FAIL", str(exc)
    try:
        h, w = engine.input_size
        t0 = time.perf_counter()
        engine.infer(np.full((h, w, 3), 114, np.uint8))
        ms = (time.perf_counter() - t0) * 1000
    except Exception as exc:
        return "bundle", "FAIL", f"loaded but inference failed: {exc}"
    finally:
        engine.close()
    m = bundle.manifest
    status = "WARN" if engine.degraded_reason else "OK"
    extra = f" (degraded: {engine.degraded_reason})" if engine.degraded_reason else ""
    verified = "signature verified" if ring is not None else "signature NOT verified"
    return "bundle", status, f"{m.name} v{m.version} on {engine.device}, {ms:.1f} ms first frame, {verified}{extra}"
