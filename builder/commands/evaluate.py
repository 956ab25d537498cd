"""edge-builder evaluate: COCO mAP of a checkpoint or any TFLite variant on a dataset's validation split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "evaluate",
        help="mAP50-95 / mAP50 (and per class) of a checkpoint or .tflite on a dataset's validation split",
        description="Same letterbox, decoder and NMS as the agent; libreyolo's validation thresholds (conf 0.001, IoU 0.6).",
    )
    p.add_argument("--model_path", "--model-path", type=Path, required=True, help="checkpoint (.pth) or .tflite file")
    p.add_argument("--dataset_path", "--dataset-path", type=Path, required=True, help="YOLO or COCO dataset")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--imgsz", type=int, default=None, help="input size for checkpoints (default: the checkpoint's)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from builder.evaluate.evaluator import EvaluateError, evaluate_path

    try:
        res, names = evaluate_path(args.model_path, args.dataset_path, args.imgsz, args.threads, args.split,
                                   show_progress=not args.json)
    except EvaluateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = res.summary(names)
    summary["model_path"] = str(args.model_path)
    summary["dataset_path"] = str(args.dataset_path)
    summary["split"] = args.split
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.model_path} on {args.dataset_path} ({args.split}, {res.result.images} images)")
    print(f"  mAP50-95 {res.result.map50_95:.4f}   mAP50 {res.result.map50:.4f}   "
          f"model {res.latency_ms:.1f} ms, decode {res.decode_ms:.1f} ms per image")
    for n, pc in summary["per_class"].items():  # type: ignore[union-attr]
        a, b = pc["map50_95"], pc["map50"]
        print(f"  {n:<20} mAP50-95 {'—' if a is None else f'{a:.4f}'}   mAP50 {'—' if b is None else f'{b:.4f}'}")
    return 0
