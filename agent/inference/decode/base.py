"""What every decoder shares: the result type, quantization, and binding to a model's output tensors.

A decoder is bound once to the outputs' shapes and quantization, then `decode()` runs per frame (pure numpy).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.inference.tensors import TensorInfo

if TYPE_CHECKING:
    from agent.inference.preprocess import LetterboxInfo

Quant = tuple[float, int] | None


class DecodeError(ValueError):
    """The model's outputs do not look like what the decoder expects (wrong count, shapes or classes)."""


@dataclass
class Detections:
    """Boxes xyxy (in frame pixels when a LetterboxInfo was given, else canvas pixels)."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def dequantize(a: np.ndarray, q: Quant) -> np.ndarray:
    """Real values of a tensor from its own (scale, zero_point); float tensors pass through."""
    if q is None or a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    scale, zp = q
    return (a.astype(np.float32) - np.float32(zp)) * np.float32(scale)


class Decoder(ABC):
    """Raw outputs of one model family → Detections."""

    def __init__(self, num_classes: int, input_size: int | tuple[int, int], n_outputs: int,
                 quant: Sequence[Quant] | None) -> None:
        self.num_classes = int(num_classes)
        self.input_h, self.input_w = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.quant: list[Quant] = list(quant) if quant is not None else [None] * n_outputs

    @classmethod
    @abstractmethod
    def from_tensors(cls, tensors: Sequence[TensorInfo], num_classes: int, input_size: int | tuple[int, int],
                     **kw: Any) -> Decoder:
        """Bound to a backend's output tensors (quantization read from each tensor)."""

    @classmethod
    def from_details(cls, details: Sequence[dict[str, Any]], num_classes: int, input_size: int | tuple[int, int],
                     **kw: Any) -> Decoder:
        """From a TFLite interpreter's get_output_details()."""
        from agent.inference.tflite import tensor_info  # the runtime shim, only where details come from it

        return cls.from_tensors([tensor_info(d) for d in details], num_classes, input_size, **kw)

    @abstractmethod
    def decode(self, outputs: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.7, max_det: int = 300, *,
               letterbox: LetterboxInfo | None = None, classes: Sequence[int] | None = None,
               pre_nms_top_k: int = 0) -> Detections:
        """Detections of one frame."""
