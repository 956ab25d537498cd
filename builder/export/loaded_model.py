"""A checkpoint loaded for export and evaluation: the eval-mode model plus what the bundle needs to know.

Conversion and evaluation both start from here, so neither depends on the other to read a checkpoint.
The file format itself is builder.train.checkpoint's (never downloads anything).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.protocol.manifest import Preprocess
from builder.train.checkpoint import CheckpointError, load_checkpoint


class ModelLoadError(Exception):
    """The checkpoint is missing or unreadable; the message says which."""


@dataclass
class LoadedModel:
    model: Any  # libreyolo LibreYOLONASModel, eval mode
    num_classes: int
    class_names: list[str]
    imgsz: int
    architecture: str
    reg_max: int = 16
    strides: list[int] = field(default_factory=lambda: [8, 16, 32])
    preprocess: Preprocess = field(default_factory=Preprocess)
    meta: dict[str, Any] = field(default_factory=dict)


def load_model(path: Path | str) -> LoadedModel:
    """Load a checkpoint from `edge-builder train` (or a plain libreyolo YOLO-NAS one); clear errors."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    try:
        model, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise ModelLoadError(str(exc)) from exc
    return LoadedModel(
        model=model,
        num_classes=meta.num_classes,
        class_names=list(meta.class_names),
        imgsz=int(meta.imgsz),
        architecture=str(meta.architecture),
        reg_max=int(meta.reg_max),
        strides=list(meta.strides),
        preprocess=meta.preprocess,
        meta=json.loads(meta.model_dump_json()),
    )
