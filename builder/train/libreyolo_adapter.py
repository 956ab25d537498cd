"""The one module that touches libreyolo's training internals; tests/test_libreyolo_contract.py pins them.

libreyolo 1.6.0 has no public hook for a checkpoint policy, so this module, and only this module:
- subclasses its YOLO-NAS trainer, overriding the private `_save_checkpoint` (which calls the private
  `_update_best_state`) and `_checkpoint_extra_metadata`;
- swaps the module attribute `libreyolo.models.yolonas.trainer.YOLONASTrainer` for that subclass while
  `LibreYOLONAS.train` runs (it imports the name at call time).
The rest of libreyolo used here is public (LibreYOLONAS, `.train` options, the epoch callback event, its
logger), but it lives here too, so the rest of builder.train never imports libreyolo and speaks only
`TrainingHooks`, `EpochRecord` and `ValScores`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

from builder.train.config import TrainConfig
from builder.train.history import EpochRecord, ValScores

# The version the contract test and the accuracy run were checked against.
SUPPORTED_VERSION = "1.6.0"
# libreyolo's run directory is PROJECT/RUN_NAME/weights/{last,best}.pt.
RUN_NAME = "run"
LEFTOVER_WEIGHTS = ("best.pt", "last.pt", "average.pt")


class TrainingHooks(Protocol):
    """What the checkpoint policy and the epoch report need from a libreyolo run, in our terms."""

    def on_checkpoint(self, epoch_done: int, loss: float, scores: ValScores) -> None:
        """Every rank, each time libreyolo would save (after each epoch)."""

    def save_best(self, epoch_done: int, state_dict: dict[str, Any]) -> None:
        """Rank 0: the best epoch so far; `state_dict` holds the EMA weights."""

    def full_save_due(self, epoch_done: int, epochs: int, save_period: int) -> bool:
        """Rank 0: whether libreyolo should write its full resumable checkpoint now."""

    def on_full_saved(self, last_pt: Path) -> None:
        """Rank 0: libreyolo wrote its full checkpoint (with `extra_metadata`) to `last_pt`."""

    def extra_metadata(self, epoch_done: int, best_epoch: int) -> dict[str, Any]:
        """Keys added to libreyolo's full checkpoint."""

    def on_epoch(self, record: EpochRecord) -> None:
        """libreyolo's epoch callback, fired after the checkpoint step."""


def libreyolo_version() -> str | None:
    import libreyolo

    return getattr(libreyolo, "__version__", None)


def run_weights_dir(project: Path) -> Path:
    return project / RUN_NAME / "weights"


def remove_leftover_weights(project: Path) -> None:
    """Copies libreyolo may write at the end (best / last / averaged) would break our disk bound."""
    for stray in LEFTOVER_WEIGHTS:
        (run_weights_dir(project) / stray).unlink(missing_ok=True)


def _metric(vm: dict[str, float], *keys: str) -> float | None:
    for k in keys:
        v = vm.get(k)
        if v is not None:
            return float(v)
    return None


def _scores(vm: dict[str, float]) -> ValScores:
    return ValScores(map50=_metric(vm, "metrics/mAP50"), map50_95=_metric(vm, "metrics/mAP50-95"))


def _flat_metrics(val_metrics: Any) -> dict[str, float]:
    vm = dict(val_metrics or {})
    if isinstance(vm.get("metrics"), dict):  # libreyolo nests the scalars under "metrics"
        vm = dict(vm["metrics"])
    return {k: float(v) for k, v in vm.items() if isinstance(v, int | float)}


def epoch_record(ev: Any) -> EpochRecord:
    """Our record of libreyolo's TrainEpochEvent (1-based epoch)."""
    vm = {k: float(v) for k, v in dict(ev.val_metrics or {}).items() if isinstance(v, int | float)}
    items = {k: float(v) for k, v in dict(ev.train_loss_items or {}).items()}
    lrs = list(dict(ev.lr or {}).values())
    scores = _scores(vm) if ev.validated else ValScores()
    return EpochRecord(
        epoch=int(ev.epoch),
        train_loss=float(ev.train_loss),
        cls=items.get("cls"),
        iou=items.get("iou"),
        dfl=items.get("dfl"),
        map50=scores.map50,
        map50_95=scores.map50_95,
        lr=float(lrs[0]) if lrs else None,
        seconds=float(ev.epoch_seconds),
        best=bool(ev.is_best),
    )


def edge_trainer_class(hooks: TrainingHooks, weights_dir: Path) -> type:
    """libreyolo's YOLO-NAS trainer with the checkpoint policy of `hooks`.

    The best epoch's EMA weights go to `hooks.save_best` (no 256 MB best.pt round trip); libreyolo's full
    resumable state (last.pt, with `hooks.extra_metadata` added) is written only when `hooks.full_save_due`.
    """
    from libreyolo.models.yolonas.trainer import YOLONASTrainer
    from libreyolo.training.distributed import is_main_process, unwrap_model

    class EdgeYOLONASTrainer(YOLONASTrainer):  # type: ignore[misc, valid-type]
        def _save_checkpoint(self, epoch: int, loss: float, val_metrics: Any = None, is_best: Any = None) -> Any:
            if is_best is None:
                is_best = self._update_best_state(epoch, val_metrics)
            self._edge_epoch = epoch
            done = epoch + 1
            hooks.on_checkpoint(done, float(loss), _scores(_flat_metrics(val_metrics)))
            if not is_main_process():
                return None
            if is_best:
                ema = getattr(self, "ema_model", None)
                module = ema.ema if ema is not None else unwrap_model(self.model)
                hooks.save_best(done, module.state_dict())
            period = int(getattr(self.config, "save_period", 0) or 0)
            if hooks.full_save_due(done, int(self.config.epochs), period):
                super()._save_checkpoint(epoch, loss, val_metrics, is_best=False)
                hooks.on_full_saved(weights_dir / "last.pt")
            return None

        def _checkpoint_extra_metadata(self) -> dict[str, Any]:
            extra = dict(super()._checkpoint_extra_metadata())
            epoch_done = int(getattr(self, "_edge_epoch", 0)) + 1
            extra.update(hooks.extra_metadata(epoch_done, int(getattr(self, "best_epoch", 0) or 0)))
            return extra

    return EdgeYOLONASTrainer


@contextlib.contextmanager
def use_trainer(cls: type) -> Iterator[None]:
    """LibreYOLONAS.train imports YOLONASTrainer from this module at call time; point it at ours."""
    import libreyolo.models.yolonas.trainer as trainer_mod

    orig = trainer_mod.YOLONASTrainer
    trainer_mod.YOLONASTrainer = cls  # type: ignore[misc]
    try:
        yield
    finally:
        trainer_mod.YOLONASTrainer = orig  # type: ignore[misc]


@contextlib.contextmanager
def quiet_libreyolo(verbose: bool, log_file: Path) -> Iterator[TextIO]:
    """libreyolo logs INFO to stderr and pycocotools prints to stdout; keep our table readable.

    Yields the real stdout for our own output. libreyolo's INFO lines still go to its train.log, and
    pycocotools' prints to `log_file`.
    """
    real_out = sys.stdout
    lib = logging.getLogger("libreyolo")
    saved = (lib.level, list(lib.handlers), lib.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("libreyolo %(levelname)s: %(message)s"))
    lib.handlers = [handler]
    lib.setLevel(logging.INFO)
    lib.propagate = False
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        redirect = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(f)
        try:
            with redirect:
                yield real_out
        finally:
            lib.setLevel(saved[0])
            lib.handlers = saved[1]
            lib.propagate = saved[2]


def build_yolonas(size: str, num_classes: int, device: str) -> Any:
    """libreyolo's YOLO-NAS wrapper (`.model` is the network), built from scratch.

    model_path=None: a name like "LibreYOLONASs.pt" would fetch Deci's (non-commercial) weights.
    """
    from libreyolo import LibreYOLONAS

    return LibreYOLONAS(None, size=size, nb_classes=num_classes, device=device)


def fit(wrapper: Any, cfg: TrainConfig, hooks: TrainingHooks, *, data_yaml: Path, device: str, amp: bool,
        project: Path, resume_from: Path | None) -> None:
    """Run libreyolo's training loop with our trainer subclass; run files go under `project`."""
    kwargs: dict[str, Any] = dict(
        data=str(data_yaml),
        epochs=cfg.epochs,
        batch=cfg.batch_size,
        imgsz=cfg.imgsz,
        device=device,
        workers=cfg.workers,
        seed=cfg.seed,
        project=str(project),
        name=RUN_NAME,
        exist_ok=True,
        amp=amp,
        patience=cfg.patience,
        callbacks=[lambda ev: hooks.on_epoch(epoch_record(ev))],
        eval_interval=cfg.eval_interval,
        save_period=cfg.save_period,
        faster_coco_eval=False,  # not installed; avoids a warning per epoch
        sync_bn=device.startswith("cuda"),  # SyncBatchNorm is CUDA-only; CPU (gloo) DDP needs plain BN
    )
    if cfg.start_lr is not None:
        kwargs["lr0"] = cfg.start_lr
    if resume_from is not None:
        kwargs["resume"] = str(resume_from)
    with use_trainer(edge_trainer_class(hooks, run_weights_dir(project))):
        wrapper.train(**kwargs)
