"""The per-epoch record of a run: the printed table, history.json and the training curves (curves.png)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple, TextIO

from pydantic import BaseModel


class ValScores(NamedTuple):
    """The validation scores we keep from one evaluation (None: not measured)."""

    map50: float | None = None
    map50_95: float | None = None


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    cls: float | None = None
    iou: float | None = None
    dfl: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    lr: float | None = None
    seconds: float
    best: bool = False


TABLE_HEADER = (
    f"{'epoch':>11} {'loss':>8} {'cls':>8} {'iou':>8} {'dfl':>8} {'mAP50':>8} {'mAP50-95':>9} {'lr':>9} {'time':>8}"
)


def print_row(out: TextIO, r: EpochRecord, epochs: int) -> None:
    def f(v: float | None, w: int = 8, p: int = 4) -> str:
        return f"{v:{w}.{p}f}" if v is not None else " " * (w - 1) + "-"

    star = " *" if r.best else ""
    out.write(
        f"{r.epoch:>5}/{epochs:<5} {f(r.train_loss)} {f(r.cls)} {f(r.iou)} {f(r.dfl)} "
        f"{f(r.map50)} {f(r.map50_95, 9)} {r.lr if r.lr is not None else 0:9.2e} {r.seconds:7.1f}s{star}\n"
    )
    out.flush()


def save_history(history: list[EpochRecord], path: Path) -> None:
    path.write_text(json.dumps([h.model_dump() for h in history], indent=1))


def load_history(path: Path, up_to_epoch: int) -> list[EpochRecord]:
    """The saved records of epochs 1..up_to_epoch (a resumed run continues after them); [] without a file."""
    if not path.exists():
        return []
    history = [EpochRecord.model_validate(h) for h in json.loads(path.read_text())]
    return [h for h in history if h.epoch <= up_to_epoch]


def plot_curves(history: list[EpochRecord], out: Path) -> Path | None:
    """Loss components and validation mAP per epoch, as one PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h.epoch for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(ep, [h.train_loss for h in history], label="total", lw=2)
    for name in ("cls", "iou", "dfl"):
        vals = [getattr(h, name) for h in history]
        if any(v is not None for v in vals):
            ax1.plot(ep, [v if v is not None else float("nan") for v in vals], label=name)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    val = [(h.epoch, h.map50, h.map50_95) for h in history if h.map50 is not None]
    if val:
        ax2.plot([v[0] for v in val], [v[1] for v in val], "o-", label="mAP50")
        ax2.plot([v[0] for v in val], [v[2] for v in val], "s-", label="mAP50-95")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation mAP")
    ax2.set_ylim(0, 1)
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return out
