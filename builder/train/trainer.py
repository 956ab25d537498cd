"""Train YOLO-NAS S/M/L from scratch on libreyolo 1.6.0, and own everything around it.

What libreyolo does: the network, the PPYoloE loss, augmentation, AdamW + cosine schedule, EMA, its COCO
validation each epoch, and its full training checkpoints (weights/last.pt, weights/best.pt, ~256 MB each
for yolo_nas_s: model, train_model, optimizer, EMA, RNG).

What we do around it:
- validate the dataset first (builder.data.dataset) and refuse unusable data with the report;
- hand libreyolo a clean YOLO-format view of the data (symlinks + rewritten labels), whatever the source
  layout (YOLO variants, COCO JSON);
- construct the model from scratch (`LibreYOLONAS(None, size, nb_classes)`), never a named checkpoint, and
  block every non-loopback network connection while training (builder.train.network_guard; libreyolo's
  named models fetch Deci's weights, which are non-commercial and need the network);
- our checkpoint policy (builder.train.policy, wired into libreyolo by builder.train.libreyolo_adapter,
  the only module touching libreyolo's internals): lean `ckpt_best.pth` + resumable `ckpt_latest.pth`;
- print a per-epoch table, keep history.json and draw training curves (builder.train.history);
- resume from ckpt_latest.pth; optional warm start from a local checkpoint (`--pretrained PATH`).

Layout of `OUTPUT/checkpoints/NAME/`: ckpt_best.pth, ckpt_latest.pth, history.json, curves.png,
train_config.json, summary.json, data/ (the YOLO view), libreyolo/ (libreyolo's run directory: logs,
results.csv).
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from builder.data.dataset import Dataset, load_dataset, validate_dataset, write_yolo_view
from builder.train import libreyolo_adapter as lib
from builder.train.checkpoint import CheckpointError, CheckpointMeta, read_checkpoint, save_checkpoint
from builder.train.config import BEST_NAME, LATEST_NAME, DatasetRejected, TrainConfig, TrainError
from builder.train.history import TABLE_HEADER, EpochRecord, load_history, plot_curves, print_row
from builder.train.network_guard import NetworkBlocked, no_network
from builder.train.policy import RunPolicy

# Names other code imports from here.
__all__ = [
    "BEST_NAME", "LATEST_NAME", "DatasetRejected", "EpochRecord", "NetworkBlocked", "TrainConfig", "TrainError",
    "no_network", "plot_curves", "run_training", "train",
]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _check_options(cfg: TrainConfig) -> None:
    exp, latest = cfg.experiment_dir, cfg.experiment_dir / LATEST_NAME
    if cfg.resume and not latest.exists():
        raise TrainError(f"--resume: {latest} does not exist (nothing to resume)")
    if not cfg.resume and latest.exists() and not cfg.overwrite:
        raise TrainError(
            f"{exp} already holds a run; pass --resume to continue it, --overwrite to start again, "
            "or choose another --experiment_name"
        )
    if cfg.pretrained is not None and cfg.resume:
        raise TrainError("--pretrained and --resume exclude each other")


def _prepare_data(cfg: TrainConfig, out: TextIO) -> tuple[Dataset, Path]:
    """Validate (refusing unusable data), clear an overwritten run, write the YOLO view and train_config.json."""
    report = validate_dataset(cfg.dataset_path)
    if not report.usable:
        raise DatasetRejected(report)
    if report.warnings:
        out.write(f"dataset: {len(report.warnings)} warnings (first: {report.warnings[0]})\n")
    ds = load_dataset(cfg.dataset_path)
    exp = cfg.experiment_dir
    exp.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite and not cfg.resume and _rank() == 0:
        for name in (BEST_NAME, LATEST_NAME, "history.json", "curves.png"):
            (exp / name).unlink(missing_ok=True)
    # One view per rank under torchrun, so ranks never race on the same symlinks.
    view = exp / ("data" if _rank() == 0 else f"data_rank{_rank()}")
    data_yaml = write_yolo_view(ds, view)
    (exp / "train_config.json").write_text(cfg.model_dump_json(indent=1))
    return ds, data_yaml


def _epochs_done_before(cfg: TrainConfig, ds: Dataset) -> int:
    """Epochs already in ckpt_latest.pth when resuming (0 otherwise); refuses a checkpoint of another run."""
    if not cfg.resume:
        return 0
    latest = cfg.experiment_dir / LATEST_NAME
    _, meta, _ = read_checkpoint(latest)
    if meta.architecture != cfg.model or meta.class_names != ds.class_names:
        raise TrainError(
            f"cannot resume {latest}: it is {meta.architecture} with classes {meta.class_names}, "
            f"the run asks for {cfg.model} with {ds.class_names}"
        )
    if meta.epoch >= cfg.epochs:
        raise TrainError(f"{latest} already trained {meta.epoch} epochs; raise --epochs to continue")
    return meta.epoch


def _device_and_amp(cfg: TrainConfig) -> tuple[str, bool]:
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"device {cfg.device!r} requested but CUDA is not available here")
    amp = cfg.amp if cfg.amp is not None else device.startswith("cuda")
    return device, amp


def _base_meta(cfg: TrainConfig, ds: Dataset) -> CheckpointMeta:
    import torch

    return CheckpointMeta(
        architecture=cfg.model,  # type: ignore[arg-type]
        num_classes=ds.num_classes,
        class_names=ds.class_names,
        imgsz=cfg.imgsz,
        dataset_fingerprint=ds.fingerprint(),
        dataset_path=str(Path(cfg.dataset_path).resolve()),
        libreyolo_version=lib.libreyolo_version(),
        torch_version=torch.__version__,
        epochs=cfg.epochs,
    )


def _load_pretrained(wrapper: Any, path: Path, num_classes: int, out: TextIO) -> None:
    """Warm start from a local checkpoint the user owns; the class head is skipped when its size differs."""
    state, meta, _ = read_checkpoint(path)
    target = wrapper.model.state_dict()
    usable = {k: v for k, v in state.items() if k in target and tuple(target[k].shape) == tuple(v.shape)}
    skipped = [k for k in state if k not in usable]
    if len(usable) < 0.5 * len(target):
        raise CheckpointError(
            f"{path}: only {len(usable)} of {len(target)} tensors fit; it is not a {wrapper.size!r} YOLO-NAS checkpoint"
        )
    wrapper.model.load_state_dict(usable, strict=False)
    out.write(
        f"warm start from {path} ({meta.architecture}, {meta.num_classes} classes): {len(usable)} tensors loaded, "
        f"{len(skipped)} skipped{' (class head: ' + str(num_classes) + ' classes now)' if skipped else ''}\n"
    )


def _print_header(run: RunPolicy, wrapper: Any, ds: Dataset, device: str, amp: bool, done_before: int) -> None:
    cfg = run.cfg
    run.out.write(
        f"training {cfg.model} ({sum(p.numel() for p in wrapper.model.parameters()) / 1e6:.2f}M params) "
        f"on {len(ds.images('train'))} train / {len(ds.images('val'))} val images, {ds.num_classes} classes "
        f"{ds.class_names}, {cfg.imgsz} px, batch {cfg.batch_size}, device {device}"
        f"{' (AMP)' if amp else ''}, {cfg.epochs} epochs{f', resuming after epoch {done_before}' if cfg.resume else ''}"
        f"{f', lr0 {cfg.start_lr:g}' if cfg.start_lr is not None else ''}"
        f"{' (the warm-start default; --lr0 to change)' if cfg.lr0 is None and cfg.start_lr is not None else ''}\n"
    )
    run.out.write(TABLE_HEADER + "\n")
    for rec in run.history:
        print_row(run.out, rec, cfg.epochs)


def _fit(run: RunPolicy, ds: Dataset, data_yaml: Path, device: str, amp: bool, done_before: int) -> list[str]:
    """libreyolo's training with the network blocked; returns the blocked network attempts."""
    cfg, exp = run.cfg, run.cfg.experiment_dir
    attempts: list[str] = []
    try:
        with lib.quiet_libreyolo(cfg.verbose, exp / "eval.log"), no_network(attempts):
            # `out` was resolved before stdout was redirected; under torchrun only rank 0 reports.
            if _rank() != 0:
                run.out = io.StringIO()
            wrapper = lib.build_yolonas(cfg.size, ds.num_classes, device)
            if cfg.pretrained is not None:
                _load_pretrained(wrapper, cfg.pretrained, ds.num_classes, run.out)
            _print_header(run, wrapper, ds, device, amp, done_before)
            lib.fit(wrapper, cfg, run, data_yaml=data_yaml, device=device, amp=amp, project=exp / "libreyolo",
                    resume_from=exp / LATEST_NAME if cfg.resume else None)
    except Exception as exc:
        if attempts:
            raise TrainError(f"training tried to reach the network ({'; '.join(attempts)}): refused") from exc
        raise
    finally:
        run.bar.close()
        if run.history and _rank() == 0:
            plot_curves(run.history, exp / "curves.png")
    return attempts


def _finish(run: RunPolicy, out: TextIO, t_start: float) -> Path:
    """Make sure a best checkpoint exists, drop libreyolo's leftovers, write and print summary.json."""
    exp = run.cfg.experiment_dir
    best, latest = exp / BEST_NAME, exp / LATEST_NAME
    if not best.exists() and latest.exists():
        # No validation ever improved (e.g. every mAP 0): keep the latest weights as the best we have.
        state, meta, _ = read_checkpoint(latest)
        save_checkpoint(best, state, meta)
    lib.remove_leftover_weights(exp / "libreyolo")
    bm = run.best_meta.metrics if run.best_meta else None
    summary = {
        "best": str(best),
        "latest": str(latest),
        "best_epoch": bm.best_epoch if bm else None,
        "best_map50": bm.map50 if bm else None,
        "best_map50_95": bm.map50_95 if bm else None,
        "epochs": run.cfg.epochs,
        "seconds": round(time.time() - t_start, 1),
    }
    (exp / "summary.json").write_text(json.dumps(summary, indent=1))
    out.write(
        f"best: epoch {summary['best_epoch']}, mAP50 {summary['best_map50'] or 0:.4f}, "
        f"mAP50-95 {summary['best_map50_95'] or 0:.4f} -> {best}\n"
        f"latest (resumable): {latest}\ncurves: {exp / 'curves.png'}\n"
        f"time: {summary['seconds']} s\n"
    )
    return best


def run_training(cfg: TrainConfig, out: TextIO | None = None, progress: bool = True) -> Path:
    """Validate, train, and return the path of ckpt_best.pth. Raises DatasetRejected / TrainError."""
    out = out or sys.stdout
    t_start = time.time()
    _check_options(cfg)
    ds, data_yaml = _prepare_data(cfg, out)
    done_before = _epochs_done_before(cfg, ds)
    device, amp = _device_and_amp(cfg)
    base_meta = _base_meta(cfg, ds)

    from tqdm import tqdm

    bar = tqdm(total=cfg.epochs, initial=done_before, desc=cfg.experiment_name, unit="epoch",
               disable=not progress or _rank() != 0, file=sys.stderr, leave=False)
    run = RunPolicy(cfg, base_meta, out, bar)
    if cfg.resume:
        run.history = load_history(cfg.experiment_dir / "history.json", done_before)
    attempts = _fit(run, ds, data_yaml, device, amp, done_before)
    if _rank() != 0:
        return cfg.experiment_dir / BEST_NAME
    if run.meta_hook_calls == 0:
        raise TrainError("libreyolo never called our checkpoint hook: its trainer internals changed")
    if attempts:
        raise TrainError(f"training tried to reach the network: {attempts}")
    return _finish(run, out, t_start)


def train(
    dataset_path: Path | str,
    experiment_name: str,
    epochs: int,
    batch_size: int,
    imgsz: int,
    model: str = "yolo_nas_s",
    output_dir: Path | str = Path("output"),
    device: str = "cpu",
    workers: int = 2,
    resume: bool = False,
    pretrained: Path | str | None = None,
    overwrite: bool = True,
    progress: bool = False,
    out: TextIO | None = None,
    **options: Any,
) -> Path:
    """Python entry point (demo, fixtures): train and return the path of ckpt_best.pth.

    Unlike the CLI, `overwrite` defaults to True so reruns into the same directory just work.
    Extra `options` are TrainConfig fields (lr0, seed, eval_interval, save_period, patience, amp, ...).
    """
    cfg = TrainConfig(
        dataset_path=Path(dataset_path),
        experiment_name=experiment_name,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        imgsz=imgsz,
        device=device,
        workers=workers,
        output_dir=Path(output_dir),
        resume=resume,
        pretrained=Path(pretrained) if pretrained else None,
        overwrite=overwrite and not resume,
        **options,
    )
    return run_training(cfg, out=out, progress=progress)
