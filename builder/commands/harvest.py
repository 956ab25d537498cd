"""edge-builder harvest: collected frames → a YOLO dataset with unverified pseudo-labels to review."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "harvest",
        help="pull collected hard examples into a YOLO dataset, pseudo-labelled for review",
        description="Copy the frames under the collector's DIR into DATASET (YOLO layout, data.yaml training on "
        "the reviewed images only), with pseudo-labels from the FP32 checkpoint marked unverified. Review them "
        "with `edge-builder collect --review DATASET`, then fine-tune: `edge-builder train --dataset_path "
        "DATASET --pretrained CKPT`. Harvesting again adds only new frames. See docs/FLYWHEEL.md.",
    )
    p.add_argument("--collected", type=Path, required=True, metavar="DIR", help="the collector's --dir")
    p.add_argument("--out", type=Path, required=True, metavar="DATASET", help="dataset folder (created or grown)")
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                   help="the deployed model's FP32 checkpoint (ckpt_best.pth)")
    p.add_argument("--conf", type=float, default=0.25, help="pseudo-label score threshold (default 0.25)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of frames put in val (default 0.1)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from builder.evaluate.evaluator import bar
    from builder.flywheel.harvest import HarvestError, harvest

    if not 0.0 <= args.val_fraction < 1.0 or not 0.0 < args.conf < 1.0:
        print("error: --val-fraction must be in [0, 1) and --conf in (0, 1)", file=sys.stderr)
        return 2
    try:
        rep = harvest(args.collected, args.out, args.checkpoint, args.conf, args.val_fraction, bar("harvest"))
    except HarvestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"harvested {rep.added} new frames ({rep.boxes} pseudo-boxes, unverified), {rep.skipped} already there, "
          f"into {rep.dataset}")
    return 0
