"""The backend interface: one TFLite interpreter on one device.

A backend knows nothing about models or boxes; it moves tensors. The Engine (engine.py) owns
preprocessing and decoding and chooses between backends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

T = TypeVar("T")


class BackendError(Exception):
    """A backend cannot be opened or has failed at run time (e.g. the TPU was unplugged)."""


@dataclass(frozen=True)
class TensorInfo:
    """One input/output tensor as the interpreter reports it; quantization read from the tensor."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype.kind in "ui"

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> TensorInfo:
        scale, zp = d.get("quantization", (0.0, 0)) or (0.0, 0)
        return cls(
            index=int(d["index"]),
            name=str(d["name"]),
            shape=tuple(int(x) for x in d["shape"]),
            dtype=np.dtype(d["dtype"]),
            scale=float(scale),
            zero_point=int(zp),
        )

    def dequantize(self, arr: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return arr.astype(np.float32, copy=False)
        return (arr.astype(np.float32) - self.zero_point) * self.scale


class Backend:
    """A TFLite interpreter, allocated, on one device."""

    name: ClassVar[str] = "base"

    def __init__(self, interpreter: Any, device: str, model_path: str) -> None:
        self._interp = interpreter
        self.device = device
        self.model_path = model_path
        self.inputs = [TensorInfo.from_details(d) for d in interpreter.get_input_details()]
        self.outputs = [TensorInfo.from_details(d) for d in interpreter.get_output_details()]
        if len(self.inputs) != 1:
            raise BackendError(f"{model_path}: expected one input tensor, found {len(self.inputs)}")

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    def fill_input(self, fill: Callable[[np.ndarray], T]) -> T:
        """Call `fill(view)` with a writable view of the input tensor's own memory (shape without the
        batch axis), so preprocessing writes straight into it, and return what `fill` returns (which must
        not be the view). TFLite refuses to invoke while numpy holds a reference to its buffers, hence a
        callback rather than a handle the caller could keep."""
        view = self._interp.tensor(self.input.index)()[0]
        try:
            return fill(view)
        finally:
            del view

    def set_input(self, arr: np.ndarray) -> None:
        self._interp.set_tensor(self.input.index, arr.reshape(self.input.shape).astype(self.input.dtype, copy=False))

    def invoke(self) -> None:
        try:
            self._interp.invoke()
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"{self.name} invoke failed: {exc}") from exc

    def get_outputs(self) -> list[np.ndarray]:
        """Raw (still quantized) outputs, copied, in the interpreter's output order."""
        return [self._interp.get_tensor(t.index) for t in self.outputs]

    def run(self, arr: np.ndarray) -> list[np.ndarray]:
        self.set_input(arr)
        self.invoke()
        return self.get_outputs()

    def close(self) -> None:
        # Dropping the interpreter releases the delegate (and the TPU) once nothing else holds it.
        self._interp = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.device} {self.model_path}>"
