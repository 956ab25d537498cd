"""edge-builder synth: the synthetic shapes dataset, benchmark dataset v2 on real photos (YOLO format), or a video
with ground truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic shapes dataset (YOLO format) or a test video with per-frame ground truth",
        description="Deterministic by --seed. `synth dataset OUT` writes images/, labels/ and data.yaml; "
        "`synth video OUT.mp4` writes the video and OUT.mp4.json with normalized xyxy boxes per frame.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    d = kinds.add_parser("dataset", help="YOLO-format dataset: images/{train,val}, labels/{train,val}, data.yaml")
    d.add_argument("out", type=Path, help="output directory")
    d.add_argument("--n-train", "--n_train", dest="n_train", type=int, default=128, help="training images (128)")
    d.add_argument("--n-val", "--n_val", dest="n_val", type=int, default=32, help="validation images (32)")
    d.add_argument("--imgsz", type=int, default=320, help="square image size in pixels (320)")
    _palette(d)
    _common(d)
    d.set_defaults(func=_dataset)

    ph = kinds.add_parser(
        "photo",
        help="benchmark dataset v2: class shapes on real photos, distractors, occlusion; train/val/test splits",
        description="Objects composited onto crops of the shipped Apache-2.0 photos (or --backgrounds DIR), sizes "
        "spread over the stride 8/16/32 bands at 320 px, unlabelled look-alike distractors, occluders, lighting, "
        "blur, noise. Writes images/, labels/ ({train,val,test}), data.yaml and summary.json (docs/TRAINING.md).",
    )
    ph.add_argument("out", type=Path, help="output directory")
    ph.add_argument("--n-train", "--n_train", dest="n_train", type=int, default=800, help="training images (800)")
    ph.add_argument("--n-val", "--n_val", dest="n_val", type=int, default=200,
                    help="validation images, for checkpoint selection (200)")
    ph.add_argument("--n-test", "--n_test", dest="n_test", type=int, default=300,
                    help="held-out test images, for reported numbers only (300)")
    ph.add_argument("--imgsz", type=int, default=320, help="square image size in pixels (320)")
    ph.add_argument("--backgrounds", type=Path, default=None, help="folder of your own photos (default: the shipped ones)")
    _common(ph)
    ph.set_defaults(func=_photo)

    v = kinds.add_parser("video", help="video (.mp4 mp4v or .avi MJPG) of moving shapes + <video>.json truth")
    v.add_argument("out", type=Path, help="video file to write, .mp4 or .avi")
    v.add_argument("--frames", type=int, default=100, help="number of frames (100)")
    v.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (640x480)")
    v.add_argument("--fps", type=float, default=10.0, help="frames per second (10)")
    v.add_argument("--objects", type=int, default=None, help="moving objects, one lane each (default 3)")
    _palette(v)
    _common(v)
    v.set_defaults(func=_video)


def _palette(p: argparse.ArgumentParser) -> None:
    from builder.data.synth_scene import PALETTES

    p.add_argument("--palette", choices=PALETTES, default="random",
                   help="object colours: random (only the shape tells the class) or class (each class its own "
                   "hue family, as `make demo` uses) (random)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--classes",
        default="circle,square,triangle",
        help="comma-separated class names; known shapes: circle, square, triangle, star, hexagon, cross, diamond",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")


def _classes(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--classes needs distinct non-empty names, got {text!r}")
    return names


def _dataset(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from builder.data.synth import make_dataset

    try:
        classes = _classes(args.classes)
        if args.n_train < 1 or args.n_val < 1 or args.imgsz < 32:
            raise ValueError("need --n-train >= 1, --n-val >= 1 and --imgsz >= 32")
        with tqdm(total=args.n_train + args.n_val, desc="synth", unit="img") as bar:
            root = make_dataset(
                args.out, args.n_train, args.n_val, imgsz=args.imgsz, classes=classes, seed=args.seed,
                progress=lambda done, total: bar.update(done - bar.n), palette=args.palette,
            )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.n_train} train + {args.n_val} val images, classes {classes}: {root / 'data.yaml'}")
    return 0


def _photo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from builder.data.photo_backgrounds import BackgroundError
    from builder.data.synth_photo import make_photo_dataset

    try:
        classes = _classes(args.classes)
        total = args.n_train + args.n_val + max(0, args.n_test)
        with tqdm(total=total, desc="synth photo", unit="img") as bar:
            root = make_photo_dataset(
                args.out, args.n_train, args.n_val, args.n_test, imgsz=args.imgsz, classes=classes, seed=args.seed,
                backgrounds=args.backgrounds, progress=lambda done, _total: bar.update(done - bar.n),
            )
    except (ValueError, OSError, BackgroundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.n_train} train + {args.n_val} val + {args.n_test} test images, classes {classes}: "
          f"{root / 'data.yaml'} (objects per split and stride: {root / 'summary.json'})")
    return 0


def _video(args: argparse.Namespace) -> int:
    from builder.data.synth import make_video, truth_path

    try:
        classes = _classes(args.classes)
        w, _, h = args.size.lower().partition("x")
        size = (int(w), int(h))
        truth = make_video(
            args.out, args.frames, size=size, fps=args.fps, classes=classes, seed=args.seed, n_objects=args.objects,
            palette=args.palette,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n_boxes = sum(len(t.boxes) for t in truth)
    print(f"wrote {args.out} ({len(truth)} frames, {n_boxes} boxes) and {truth_path(args.out)}")
    return 0
