"""What a training run depends on (TrainConfig, saved as train_config.json), its file names and its errors."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from builder.data.dataset import ValidationReport
from builder.train.checkpoint import ARCHITECTURES

BEST_NAME = "ckpt_best.pth"
LATEST_NAME = "ckpt_latest.pth"


class DatasetRejected(Exception):
    """validate_dataset found errors; `report` says which, with file and line."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(f"dataset {report.path} is not usable: {len(report.errors)} errors")
        self.report = report


class TrainError(Exception):
    """Training cannot start or continue (bad options, nothing to resume, libreyolo contract broken)."""


# A warm start's learning rate: from the converged test model (128 px shapes, val mAP50 0.61), 1e-3 lost a
# third of its val mAP50 in two epochs (0.52, then 0.41) while 1e-4 kept it (0.62, 0.63): a restarted warm-up
# and schedule at a from-scratch rate undo what the checkpoint learned (docs/TRAINING.md, "Fine-tuning").
FINETUNE_LR0 = 1e-4


class TrainConfig(BaseModel):
    """Everything a run depends on; saved as train_config.json beside the checkpoints."""

    model_config = ConfigDict(extra="forbid")

    dataset_path: Path
    experiment_name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    model: str = "yolo_nas_s"
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=16, ge=1)
    imgsz: int = Field(default=320, ge=32)
    device: str = "cpu"
    workers: int = Field(default=2, ge=0)
    output_dir: Path = Path("output")
    resume: bool = False
    pretrained: Path | None = None
    overwrite: bool = False
    lr0: float | None = Field(default=None, gt=0)
    seed: int = 0
    amp: bool | None = None
    eval_interval: int = Field(default=1, ge=1, description="validate every N epochs (and after the last)")
    save_period: int = Field(default=0, ge=0, description="also keep libreyolo's full epoch_N.pt every N epochs")
    patience: int = Field(default=0, ge=0, description="early stop after N epochs without improvement (0: off)")
    curves_every: int = Field(default=10, ge=1)
    latest_every_s: float = Field(default=30.0, ge=0, description="full resumable checkpoint at most this often")
    verbose: bool = False

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in ARCHITECTURES:
            raise ValueError(f"model must be one of {', '.join(ARCHITECTURES)}, not {v!r}")
        return v

    @field_validator("imgsz")
    @classmethod
    def _stride_multiple(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (the largest stride), not {v}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        ok = v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit()) or v.isdigit()
        if not ok:
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, not {v!r} (multi-GPU: use torchrun)")
        return v

    @property
    def start_lr(self) -> float | None:
        """lr0 as given; for a warm start without one, FINETUNE_LR0; else None (libreyolo's default, 5e-4)."""
        if self.lr0 is None and self.pretrained is not None:
            return FINETUNE_LR0
        return self.lr0

    @property
    def experiment_dir(self) -> Path:
        return self.output_dir / "checkpoints" / self.experiment_name

    @property
    def size(self) -> str:
        """libreyolo's size letter (s, m or l) of `model`."""
        return self.model.rsplit("_", 1)[-1]
