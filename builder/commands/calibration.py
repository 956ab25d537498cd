"""edge-builder calibration build: a calibration image set (images + labels) from a dataset: class-balanced by
default, or balanced over object-size bands (--strategy scale), or a uniform sample (--strategy random)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import SubParsers, show_help

STRATEGIES = ("class", "random", "scale")  # builder.data.calibration.STRATEGIES (not imported: keeps --help light)


def register(sub: SubParsers) -> None:
    p = sub.add_parser("calibration", help="calibration image sets for INT8 quantization")
    s = p.add_subparsers(dest="calibration_command", metavar="ACTION")
    b = s.add_parser("build", help="copy a balanced sample of a dataset's training images into a folder")
    b.add_argument("--dataset_path", "--dataset-path", type=Path, required=True, help="YOLO or COCO dataset")
    b.add_argument("--out", type=Path, required=True, help="folder to create (images/ + calibration.json)")
    b.add_argument("--n", type=int, default=300, help="number of images (default 300, the recommended minimum)")
    b.add_argument("--split", default="train", help="split to sample (default train)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--imgsz", type=int, default=320,
                   help="model input size the object-size bands are counted at (default 320)")
    b.add_argument("--strategy", choices=STRATEGIES, default="class",
                   help="class: greedy class balance (default); scale: greedy balance over the stride 8/16/32 "
                        "object-size bands at --imgsz; random: a seeded uniform sample")
    b.set_defaults(func=_build)
    p.set_defaults(func=show_help(p))


def _build(args: argparse.Namespace) -> int:
    from builder.data.calibration import CalibrationError, build_calibration_set

    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} exists and is not empty", file=sys.stderr)
        return 1
    try:
        info = build_calibration_set(args.dataset_path, args.out, n=args.n, seed=args.seed, split=args.split,
                                     strategy=args.strategy, imgsz=args.imgsz)
    except (CalibrationError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{info['images']} images in {args.out / 'images'}, labels in {args.out / 'labels'}; "
          f"strategy {info['strategy']}; images per class: {info['images_per_class']}; "
          f"images per stride band at {args.imgsz} px: {info['images_per_band']}")
    _print_coverage(args.out / "images", [str(f) for f in info["files"]], args.imgsz)  # type: ignore[attr-defined]
    if int(info["images"]) < 300:  # type: ignore[call-overload]
        print("warning: fewer than 300 images (the recommended minimum for calibration)", file=sys.stderr)
    return 0


def _print_coverage(images: Path, files: list[str], imgsz: int) -> None:
    """Objects per stride at the model's input size, as the converter's coverage check will count them."""
    from builder.quantize.coverage import count_coverage, summary_line

    cov = count_coverage(images, files, imgsz)
    print(summary_line(cov))
    for w in cov["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
