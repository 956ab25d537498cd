"""Where a bundle goes: the default name and directory, the pre-flight write check, the atomic install.

The bundle is built in a hidden staging directory beside the destination and renamed into place
only when everything succeeded, so a failed run never leaves a directory that looks like a bundle.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.convert.options import ConvertError


def default_out_dir(model_path: Path, name: str) -> Path:
    """output/models/NAME relative to the working directory (beside output/checkpoints/NAME)."""
    return Path("output") / "models" / name


def default_name(model_path: Path) -> str:
    """output/checkpoints/NAME/ckpt_best.pth → NAME (the experiment name); else the file's stem."""
    cand = model_path.parent.name if model_path.stem.startswith(("ckpt_", "best", "last")) else model_path.stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", cand)[:64] or "model"


def check_output_dir(out: Path) -> None:
    """Fail before any heavy work when the destination cannot be written."""
    if out.exists() and not out.is_dir():
        raise ConvertError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ConvertError(f"output {out} is a non-empty directory that is not a bundle; refusing to replace it")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent))
        probe.rmdir()
    except OSError as exc:
        raise ConvertError(f"cannot write to output directory {parent}: {exc.strerror or exc}") from exc


def install(staging: Path, out: Path) -> None:
    """Replace `out` by `staging` with renames (same filesystem), never leaving a half bundle."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class Workspace:
    """`staging`: the future bundle, beside `out`; `work`: scratch (ONNX, FP32 TFLite, calibration array)."""

    out: Path
    staging: Path
    work: Path

    @classmethod
    def open(cls, out: Path) -> Workspace:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        return cls(out, staging, Path(tempfile.mkdtemp(prefix="edge-convert-")))

    def discard(self) -> None:
        """After a failure: nothing that looks like a bundle stays behind."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
