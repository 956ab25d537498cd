"""edge-builder calibration build: a class-balanced calibration image set from a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import SubParsers, show_help


def register(sub: SubParsers) -> None:
    p = sub.add_parser("calibration", help="calibration image sets for INT8 quantization")
    s = p.add_subparsers(dest="calibration_command", metavar="ACTION")
    b = s.add_parser("build", help="copy a class-balanced sample of a dataset's training images into a folder")
    b.add_argument("--dataset_path", "--dataset-path", type=Path, required=True, help="YOLO or COCO dataset")
    b.add_argument("--out", type=Path, required=True, help="folder to create (images/ + calibration.json)")
    b.add_argument("--n", type=int, default=300, help="number of images (default 300, the recommended minimum)")
    b.add_argument("--split", default="train", help="split to sample (default train)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_build)
    p.set_defaults(func=show_help(p))


def _build(args: argparse.Namespace) -> int:
    from builder.data.calibration import CalibrationError, build_calibration_set

    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} exists and is not empty", file=sys.stderr)
        return 1
    try:
        info = build_calibration_set(args.dataset_path, args.out, n=args.n, seed=args.seed, split=args.split)
    except (CalibrationError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{info['images']} images in {args.out / 'images'}; images per class: {info['images_per_class']}")
    if int(info["images"]) < 300:  # type: ignore[call-overload]
        print("warning: fewer than 300 images (the recommended minimum for calibration)", file=sys.stderr)
    return 0
