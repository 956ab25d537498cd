"""edge-builder train: YOLO-NAS S/M/L from scratch on a YOLO-format or COCO dataset (libreyolo engine).

The guide's Step 1 flags are accepted verbatim (snake_case) and in kebab-case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import SubParsers


def _flag(p: argparse.ArgumentParser, name: str, **kw: object) -> None:
    """Register --snake_case and --kebab-case spellings of one option."""
    kebab = name.replace("_", "-")
    names = [f"--{name}"] + ([f"--{kebab}"] if kebab != name else [])
    p.add_argument(*names, dest=name, **kw)  # type: ignore[arg-type]


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "train",
        help="train YOLO-NAS S/M/L from scratch (never downloads weights) -> output/checkpoints/NAME/ckpt_best.pth",
        description="Validate the dataset, then train YOLO-NAS with libreyolo from scratch. Writes "
        "OUTPUT/checkpoints/NAME/ckpt_best.pth (EMA weights + metadata), ckpt_latest.pth (resumable), "
        "history.json and curves.png, and prints a per-epoch table. Exit status: 0 done, 2 dataset "
        "rejected (report printed), 1 other errors.",
    )
    _flag(p, "dataset_path", type=Path, required=True,
          help="YOLO dataset dir (images/{train,val}+labels, or train/images variant, with data.yaml names) "
          "or COCO JSON dataset")
    _flag(p, "experiment_name", help="run name: output/checkpoints/NAME/ (required unless --validate_only)")
    _flag(p, "no_pretrained", action="store_true",
          help="accepted for the guide's sake: training always starts from scratch unless --pretrained PATH")
    _flag(p, "pretrained", type=Path, default=None,
          help="warm start from a local checkpoint you own (ours or libreyolo's); never downloads")
    _flag(p, "model", default="yolo_nas_s", choices=["yolo_nas_s", "yolo_nas_m", "yolo_nas_l"],
          help="architecture (yolo_nas_s)")
    _flag(p, "epochs", type=int, default=100, help="epochs (100)")
    _flag(p, "batch_size", type=int, default=16, help="batch size (16; global batch under torchrun)")
    _flag(p, "imgsz", type=int, default=320, help="square input size, multiple of 32 (320)")
    _flag(p, "device", default="cpu", help="cpu, cuda, cuda:N or auto (cpu); multi-GPU: torchrun, see docs")
    _flag(p, "workers", type=int, default=2, help="dataloader worker processes (2)")
    _flag(p, "resume", action="store_true", help="continue from output/checkpoints/NAME/ckpt_latest.pth")
    _flag(p, "overwrite", action="store_true", help="start NAME again, replacing its checkpoints")
    _flag(p, "output_dir", type=Path, default=Path("output"), help="output root (output)")
    _flag(p, "lr0", type=float, default=None, help="initial learning rate (libreyolo's YOLO-NAS default 5e-4; with --pretrained 1e-4)")
    _flag(p, "seed", type=int, default=0, help="random seed (0)")
    _flag(p, "amp", action=argparse.BooleanOptionalAction, default=None,
          help="mixed precision (default: on with CUDA, off on CPU)")
    _flag(p, "eval_interval", type=int, default=1, help="validate every N epochs and after the last (1)")
    _flag(p, "save_period", type=int, default=0,
          help="also keep a full libreyolo epoch_N.pt every N epochs (0: off, keeps disk use bounded)")
    _flag(p, "patience", type=int, default=0, help="stop after N epochs without mAP improvement (0: off)")
    _flag(p, "validate_only", action="store_true", help="only validate the dataset and print the report")
    _flag(p, "verbose", action="store_true", help="show libreyolo's own log and COCO evaluation output")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from builder.data.dataset import validate_dataset

    if args.validate_only:
        report = validate_dataset(args.dataset_path)
        print(report.format_text())
        return 0 if report.usable else 2

    if not args.experiment_name:
        print("error: --experiment_name is required", file=sys.stderr)
        return 1

    from builder.train.checkpoint import CheckpointError
    from builder.train.config import DatasetRejected, TrainConfig, TrainError
    from builder.train.trainer import run_training

    try:
        cfg = TrainConfig(
            dataset_path=args.dataset_path,
            experiment_name=args.experiment_name,
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            imgsz=args.imgsz,
            device=args.device,
            workers=args.workers,
            output_dir=args.output_dir,
            resume=args.resume,
            pretrained=args.pretrained,
            overwrite=args.overwrite,
            lr0=args.lr0,
            seed=args.seed,
            amp=args.amp,
            eval_interval=args.eval_interval,
            save_period=args.save_period,
            patience=args.patience,
            verbose=args.verbose,
        )
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            print(f"error: --{loc}: {err['msg']}", file=sys.stderr)
        return 1
    try:
        run_training(cfg, progress=True)
    except DatasetRejected as exc:
        print(exc.report.format_text(), file=sys.stderr)
        print(f"error: refusing to train: {exc}. Fix the errors above (file:line) and run again.", file=sys.stderr)
        return 2
    except (TrainError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
