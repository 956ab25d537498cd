"""Our checkpoint policy and epoch report for one run, as the TrainingHooks the libreyolo adapter calls.

- best epoch: its EMA weights go into the lean ckpt_best.pth (+ CheckpointMeta, no optimizer);
- libreyolo's full resumable state (its last.pt, our metadata inside) becomes ckpt_latest.pth, written after
  the last epoch, on --save_period epochs, and otherwise at most every `latest_every_s` seconds. On
  CPU-sized runs an epoch takes a few seconds and a full save ~0.7 s, so saving every epoch would cost a
  quarter of the time; an interrupted run loses at most `latest_every_s` of training.
So disk use stays bounded at one full + one lean checkpoint per experiment.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from builder.train.checkpoint import META_KEY_IN_LIBREYOLO, CheckpointMeta, TrainingMetrics, save_checkpoint
from builder.train.config import BEST_NAME, LATEST_NAME, TrainConfig
from builder.train.history import EpochRecord, ValScores, plot_curves, print_row, save_history


class RunPolicy:
    """State of one run shared by the checkpoint hooks and the epoch report (implements TrainingHooks)."""

    def __init__(self, cfg: TrainConfig, base_meta: CheckpointMeta, out: TextIO, bar: Any) -> None:
        self.cfg = cfg
        self.base_meta = base_meta
        self.out = out
        self.bar = bar
        self.history: list[EpochRecord] = []
        self.meta_hook_calls = 0
        self.last_scores = ValScores()
        self.last_loss: float | None = None
        self.best_meta: CheckpointMeta | None = None
        self.last_full_save = time.monotonic()

    @property
    def exp(self) -> Path:
        return self.cfg.experiment_dir

    def meta_for(self, epoch_done: int, best_epoch: int | None) -> CheckpointMeta:
        metrics = TrainingMetrics(
            map50=self.last_scores.map50,
            map50_95=self.last_scores.map50_95,
            best_epoch=best_epoch,
            train_loss=self.last_loss,
            loss_items={},
        )
        return self.base_meta.model_copy(
            update={"epoch": epoch_done, "metrics": metrics, "created": datetime.now(UTC)}
        )

    # ---------------------------------------------------------------------------- TrainingHooks

    def on_checkpoint(self, epoch_done: int, loss: float, scores: ValScores) -> None:
        self.last_scores = scores
        self.last_loss = loss

    def save_best(self, epoch_done: int, state_dict: dict[str, Any]) -> None:
        meta = self.meta_for(epoch_done, epoch_done)
        save_checkpoint(self.exp / BEST_NAME, state_dict, meta)
        self.best_meta = meta

    def full_save_due(self, epoch_done: int, epochs: int, save_period: int) -> bool:
        return (
            epoch_done >= epochs
            or (save_period > 0 and epoch_done % save_period == 0)
            or time.monotonic() - self.last_full_save >= self.cfg.latest_every_s
        )

    def on_full_saved(self, last_pt: Path) -> None:
        if last_pt.exists():
            os.replace(last_pt, self.exp / LATEST_NAME)
        self.last_full_save = time.monotonic()

    def extra_metadata(self, epoch_done: int, best_epoch: int) -> dict[str, Any]:
        self.meta_hook_calls += 1
        return {META_KEY_IN_LIBREYOLO: self.meta_for(epoch_done, best_epoch).model_dump(mode="json")}

    def on_epoch(self, record: EpochRecord) -> None:
        """The table row, history.json, the progress bar and (every `curves_every` epochs) the curves."""
        self.history.append(record)
        save_history(self.history, self.exp / "history.json")
        print_row(self.out, record, self.cfg.epochs)
        if self.bar is not None:
            self.bar.update(1)
            if record.map50 is not None:
                self.bar.set_postfix(loss=f"{record.train_loss:.3f}", mAP50=f"{record.map50:.3f}")
        if record.epoch % self.cfg.curves_every == 0:
            plot_curves(self.history, self.exp / "curves.png")
