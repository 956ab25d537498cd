"""The Backend over one TFLite interpreter; the CPU and Edge TPU backends differ only in how they open it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from agent.inference.backends.base import Backend, BackendError
from agent.inference.tensors import TensorInfo

T = TypeVar("T")


class TfliteBackend(Backend):
    """A TFLite interpreter, allocated, on one device."""

    def __init__(self, interpreter: Any, device: str, model_path: str) -> None:
        from agent.inference import tflite  # the runtime loads only when a model does

        super().__init__(device, model_path)
        self._interp = interpreter
        self._inputs = tflite.input_tensors(interpreter)
        self._outputs = tflite.output_tensors(interpreter)
        if len(self._inputs) != 1:
            raise BackendError(f"{model_path}: expected one input tensor, found {len(self._inputs)}")

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    def fill_input(self, fill: Callable[[np.ndarray], T]) -> T:
        """Zero copy: `fill` gets a view of the input tensor's own memory and must not return it. TFLite
        refuses to invoke while numpy holds a reference to its buffers, hence a callback rather than a
        handle the caller could keep."""
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
        return [self._interp.get_tensor(t.index) for t in self._outputs]

    def close(self) -> None:
        # Dropping the interpreter releases the delegate (and the TPU) once nothing else holds it.
        self._interp = None
