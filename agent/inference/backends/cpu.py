"""TFLite on the CPU with XNNPACK (the runtime applies it by default) and configurable threads: the
fallback every bundle can run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.inference.backends.base import BackendError, BackendSettings
from agent.inference.backends.tflite_backend import TfliteBackend


class CpuConfig(BackendSettings):
    """TFLite on the CPU (XNNPACK)."""

    type: Literal["cpu"] = "cpu"
    threads: int = Field(default=2, ge=1, le=64)
    xnnpack: bool = True


class CpuBackend(TfliteBackend):
    name = "cpu"
    label = "CPU"
    model = "cpu"

    @classmethod
    def open(cls, model_path: Path | str, cfg: BackendSettings | None = None) -> CpuBackend:
        from agent.inference import tflite

        cfg = cfg if isinstance(cfg, CpuConfig) else CpuConfig()
        try:
            interp = tflite.load_interpreter(model_path, cfg.threads, xnnpack=cfg.xnnpack)
        except (RuntimeError, ValueError, OSError) as exc:
            # e.g. "Encountered unresolved custom op: edgetpu-custom-op" for a TPU-compiled file.
            raise BackendError(f"cannot load {Path(model_path).name} on the CPU: {exc}") from exc
        dev = f"cpu:{cfg.threads}t" + ("" if cfg.xnnpack else ":noxnn")
        return cls(interp, dev, str(model_path))
