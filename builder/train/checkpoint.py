"""Our checkpoint format: libreyolo YOLO-NAS weights plus the metadata every later step needs.

A checkpoint is a `torch.save`d dict that loads with `weights_only=True` (tensors and plain data only,
so a foreign pickle can never execute code here):

    {"edge_fleet_checkpoint": 1, "meta": CheckpointMeta as JSON-able dict, "state_dict": {...}}

`ckpt_best.pth` holds the EMA weights only (no optimizer state, ~76 MB for yolo_nas_s).
`ckpt_latest.pth` is libreyolo's full training checkpoint (model = EMA weights, train_model, optimizer,
EMA state, RNG state: what `--resume` needs) with our metadata under the key "edge_fleet_meta".
`load_checkpoint` reads both, and also a plain libreyolo YOLO-NAS detection checkpoint (metadata is
then derived from libreyolo's own fields and marked so).

Models are always built from scratch (`LibreYOLONASModel`) and the state dict loaded strictly:
nothing is ever downloaded.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.protocol.manifest import Preprocess

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
FORMAT_KEY = "edge_fleet_checkpoint"
META_KEY_IN_LIBREYOLO = "edge_fleet_meta"

Architecture = Literal["yolo_nas_s", "yolo_nas_m", "yolo_nas_l"]
ARCHITECTURES: tuple[str, ...] = ("yolo_nas_s", "yolo_nas_m", "yolo_nas_l")


class CheckpointError(Exception):
    """The file is not a usable YOLO-NAS checkpoint (corrupt, foreign, mismatched)."""


class TrainingMetrics(BaseModel):
    """Validation metrics measured by libreyolo's COCO evaluator during training (real predictions)."""

    model_config = ConfigDict(extra="allow")

    map50: float | None = None
    map50_95: float | None = None
    best_epoch: int | None = None
    train_loss: float | None = None
    loss_items: dict[str, float] = Field(default_factory=dict)
    val_images: int | None = None


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    architecture: Architecture
    num_classes: int = Field(ge=1)
    class_names: list[str]
    imgsz: int = Field(ge=32)
    reg_max: int = 16
    strides: list[int] = Field(default_factory=lambda: [8, 16, 32])
    preprocess: Preprocess = Preprocess()
    metrics: TrainingMetrics = Field(default_factory=TrainingMetrics)
    dataset_fingerprint: str | None = None
    dataset_path: str | None = None
    libreyolo_version: str | None = None
    torch_version: str | None = None
    epoch: int = Field(default=0, ge=0, description="completed epochs")
    epochs: int | None = Field(default=None, description="planned epochs")
    ema: bool = True
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: Literal["edge-fleet", "libreyolo"] = "edge-fleet"

    def model_post_init(self, __context: Any) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def size(self) -> str:
        """libreyolo's size letter: s, m or l."""
        return self.architecture.rsplit("_", 1)[-1]


def architecture_from_size(size: str) -> str:
    arch = f"yolo_nas_{size}"
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown YOLO-NAS size {size!r} (expected s, m or l)")
    return arch


def build_model(architecture: str, num_classes: int, reg_max: int = 16) -> torch.nn.Module:
    """A freshly initialised libreyolo YOLO-NAS network (training branches unfused). Never downloads."""
    from libreyolo.models.yolonas.nn import LibreYOLONASModel

    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    return LibreYOLONASModel(config=architecture.rsplit("_", 1)[-1], nb_classes=num_classes, reg_max=reg_max)


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same directory, fsync, rename: a crash never leaves half a checkpoint."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, model: torch.nn.Module | dict[str, Any], meta: CheckpointMeta) -> Path:
    """Save weights (a module or a state dict) + metadata, atomically. Returns the path."""
    import torch

    state = model if isinstance(model, dict) else model.state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    payload = {FORMAT_KEY: FORMAT_VERSION, "meta": meta.model_dump(mode="json"), "state_dict": state}
    _atomic_save(payload, Path(path))
    return Path(path)


def _torch_load(path: Path) -> Any:
    import pickle

    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    import zipfile

    # mmap avoids a copy of big training checkpoints; it needs the zip format torch.save writes.
    mmap = zipfile.is_zipfile(path)
    try:
        # weights_only: a foreign or malicious pickle is refused instead of executed.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if not mmap:
            raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint (not a torch zip archive)") from exc
        text = str(exc)
        reason = text[text.find("WeightsUnpickler error") :].split(". ")[0] if "WeightsUnpickler" in text else ""
        raise CheckpointError(
            f"{path}: refusing a pickle that is not plain tensors/data (foreign or unsafe file). {reason}".strip()
        ) from exc
    except Exception as exc:  # zip/EOF/format errors come as RuntimeError, ValueError, EOFError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint ({type(exc).__name__}: {first})") from exc


def read_checkpoint(path: Path) -> tuple[dict[str, Any], CheckpointMeta, dict[str, Any]]:
    """(state_dict, meta, raw dict) without building a model."""
    path = Path(path)
    raw = _torch_load(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(raw).__name__}")
    try:
        if raw.get(FORMAT_KEY) is not None:
            if raw[FORMAT_KEY] != FORMAT_VERSION:
                raise CheckpointError(f"{path}: checkpoint format {raw[FORMAT_KEY]} is not supported ({FORMAT_VERSION})")
            meta = CheckpointMeta.model_validate(raw["meta"])
            state = raw["state_dict"]
        elif isinstance(raw.get(META_KEY_IN_LIBREYOLO), dict):
            meta = CheckpointMeta.model_validate(raw[META_KEY_IN_LIBREYOLO])
            state = raw["model"]  # EMA weights when is_ema_weights
        elif raw.get("model_family") == "yolonas" and isinstance(raw.get("model"), dict):
            meta = _meta_from_libreyolo(raw, path)
            state = raw["model"]
        else:
            keys = ", ".join(sorted(map(str, raw))[:8])
            raise CheckpointError(f"{path}: not a YOLO-NAS checkpoint from edge-builder or libreyolo (keys: {keys})")
    except (ValidationError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is invalid: {exc}") from exc
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: checkpoint holds no weights")
    return state, meta, raw


def _meta_from_libreyolo(raw: dict[str, Any], path: Path) -> CheckpointMeta:
    if raw.get("task", "detect") != "detect":
        raise CheckpointError(f"{path}: libreyolo checkpoint is for task {raw.get('task')!r}, not detection")
    nc = int(raw["nc"])
    names_raw = raw.get("names") or {}
    if isinstance(names_raw, dict):
        names = [str(names_raw.get(i, names_raw.get(str(i), f"class{i}"))) for i in range(nc)]
    else:
        names = [str(n) for n in list(names_raw)[:nc]] + [f"class{i}" for i in range(len(names_raw), nc)]
    return CheckpointMeta(
        architecture=architecture_from_size(str(raw.get("size", "s"))),  # type: ignore[arg-type]
        num_classes=nc,
        class_names=names,
        imgsz=int(raw.get("imgsz") or 640),
        metrics=TrainingMetrics(
            map50=raw.get("best_mAP50"), map50_95=raw.get("best_mAP50_95"), best_epoch=raw.get("best_epoch")
        ),
        libreyolo_version=raw.get("libreyolo_version"),
        epoch=int(raw.get("epoch", -1)) + 1,
        ema=bool(raw.get("is_ema_weights", False)),
        source="libreyolo",
    )


def load_checkpoint(path: Path | str, device: str = "cpu") -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build the network from scratch for the checkpoint's architecture, load its weights, eval mode.

    Returns libreyolo's `LibreYOLONASModel` (backbone / neck / heads, training branches unfused) and the
    metadata. Raises `CheckpointError` with the reason for anything unusable.
    """
    state, meta, _ = read_checkpoint(Path(path))
    model = build_model(meta.architecture, meta.num_classes, meta.reg_max)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(
            f"{path}: weights do not match {meta.architecture} with {meta.num_classes} classes: {' '.join(first)}"
        ) from exc
    model.eval()
    return model.to(device), meta
