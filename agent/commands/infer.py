"""edge-agent infer: one-shot detection on image files with a bundle (no broker, no camera)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import SubParsers

if TYPE_CHECKING:
    import numpy as np

    from agent.inference.engine import Engine
    from agent.protocol.messages import Detection


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "infer",
        help="detect objects in image files with a model bundle and print them",
        description="Runs the bundle on each image with the configured backend (Edge TPU if present, else CPU). "
        "--json prints one JSON object per line and image: {image, width, height, backend, model, version, "
        "detections: [{box: [x1, y1, x2, y2] normalized to the image, class_id, class_name, score}]}.",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (jpg, png, bmp, ...)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (manifest.json + model files)")
    p.add_argument("--config", "-c", type=Path, default=None, help="TOML config (backend, thresholds, keys)")
    p.add_argument("--keys", type=Path, default=None,
                   help="trusted public keys dir to verify the bundle's signature (default: config's "
                   "trusted_keys_dir if it exists; without keys only file hashes are checked)")
    p.add_argument("--cpu", action="store_true", help="use the CPU model even if an Edge TPU is present")
    p.add_argument("--score", type=float, default=None, help="score threshold (config detect.score_threshold)")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load_config
    from agent.inference.engine import Engine, EngineError
    from agent.inference.preprocess import load_image
    from agent.security.bundle import Bundle, BundleError
    from agent.security.signing import Keyring, SignatureError

    try:
        cfg = load_config(args.config)
        upd: dict[str, object] = {}
        if args.score is not None:
            upd["detect"] = cfg.detect.model_copy(update={"score_threshold": args.score})
        if args.cpu:
            upd["backend"] = cfg.backend.model_copy(update={"prefer": "cpu"})
        cfg = cfg.model_copy(update=upd)
        keys_dir = args.keys or (cfg.trusted_keys_dir if cfg.trusted_keys_dir.is_dir() else None)
        keyring = Keyring.load(keys_dir) if keys_dir else None
        bundle = Bundle.load(args.bundle, keyring)
        engine = Engine.load(bundle, cfg)
    except (ConfigError, BundleError, SignatureError, EngineError, OSError) as exc:
        print(f"edge-agent infer: {exc}", file=sys.stderr)
        return 2
    if keyring is None:
        print("edge-agent infer: warning: signature not verified (no trusted keys)", file=sys.stderr)
    if engine.degraded_reason:
        print(f"edge-agent infer: running on the CPU: {engine.degraded_reason}", file=sys.stderr)
    failed = 0
    try:
        for path in args.images:
            try:
                img = load_image(str(path))
                dets = engine.infer(img)
            except Exception as exc:  # one bad image does not stop the others
                failed += 1
                print(f"edge-agent infer: {path}: {exc}", file=sys.stderr)
                if args.json:
                    print(json.dumps({"image": str(path), "error": str(exc)}))
                continue
            _print_result(path, img, dets, engine, args.json)
    finally:
        engine.close()
    return 1 if failed else 0


def _print_result(path: Path, img: np.ndarray, dets: list[Detection], engine: Engine, as_json: bool) -> None:
    m = engine.bundle.manifest
    if as_json:
        print(json.dumps({
            "image": str(path),
            "width": int(img.shape[1]),
            "height": int(img.shape[0]),
            "model": m.name,
            "version": m.version,
            "backend": engine.backend_name,
            "detections": [
                {"box": [round(v, 5) for v in d.box], "class_id": d.class_id,
                 "class_name": d.class_name, "score": round(d.score, 4)}
                for d in dets
            ],
        }))
        return
    print(f"{path}: {len(dets)} detection(s) [{m.name} v{m.version} on {engine.device}]")
    for d in dets:
        x1, y1, x2, y2 = d.box
        print(f"  {d.class_name:<16} {d.score:5.2f}  [{x1:.3f}, {y1:.3f}, {x2:.3f}, {y2:.3f}]")
