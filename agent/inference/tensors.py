"""How a backend describes one input/output tensor; runtime-free so any backend (TFLite, Hailo, GPU) can
fill it in. agent.inference.tflite builds these from TFLite's tensor details."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: where it is, its shape and dtype, and its quantization (scale 0 = none)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype.kind in "ui"

    @property
    def quant(self) -> tuple[float, int] | None:
        """(scale, zero_point) of an integer tensor, None for a float one (what the decoders take)."""
        return (self.scale, self.zero_point) if self.quantized else None
