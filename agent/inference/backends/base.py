"""The backend interface, Frigate-detector style: load a model file on one device, set the input, invoke,
read the raw outputs, describe the tensors, close.

A backend knows nothing about bundles, boxes or fallbacks; it moves tensors. The Engine (engine.py) owns
preprocessing and decoding and asks the registry (registry.py) for backends by their config `type`.
Each backend comes with its own settings model (a BackendSettings subclass with `type: Literal[...]`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.inference.tensors import TensorInfo

T = TypeVar("T")


class BackendError(Exception):
    """A backend cannot be opened or has failed at run time (e.g. the TPU was unplugged)."""


class BackendSettings(BaseModel):
    """One backend's config section; subclasses narrow `type` to a Literal (the discriminator)."""

    model_config = ConfigDict(extra="forbid")

    type: str


class AcceleratorSettings(BackendSettings):
    """A backend preferred over the CPU fallback: it can be switched off, and is retried while degraded."""

    enabled: bool = True
    reprobe_interval_s: float = Field(default=30.0, gt=0, description="while degraded, retry this backend this often")


class Backend(ABC):
    """One model, loaded and ready, on one device."""

    name: ClassVar[str]  # the registry key, equal to the settings' `type`
    label: ClassVar[str]  # for people: "Edge TPU", "CPU"
    model: ClassVar[str]  # which of the bundle's model files it runs (a field of Manifest.models)

    def __init__(self, device: str, model_path: str) -> None:
        self.device = device
        self.model_path = model_path

    @classmethod
    @abstractmethod
    def open(cls, model_path: Path | str, cfg: BackendSettings | None = None) -> Self:
        """Load `model_path` on this backend's device; BackendError when it cannot run there."""

    @property
    @abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorInfo]: ...

    @abstractmethod
    def set_input(self, arr: np.ndarray) -> None:
        """Copy a (batch-of-one) input into the input tensor, cast to its dtype."""

    @abstractmethod
    def invoke(self) -> None:
        """Run the model; BackendError on a device failure."""

    @abstractmethod
    def get_outputs(self) -> list[np.ndarray]:
        """Raw (still quantized) outputs, copied, in output order."""

    @abstractmethod
    def close(self) -> None:
        """Release the device (idempotent)."""

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    def fill_input(self, fill: Callable[[np.ndarray], T]) -> T:
        """Call `fill(buf)` with a writable (H, W, C) buffer of the input's dtype, then make it the input,
        and return what `fill` returns. Backends that can expose the tensor's own memory override this so
        preprocessing writes straight into it."""
        buf = np.empty(self.input.shape[1:], self.input.dtype)
        result = fill(buf)
        self.set_input(buf[None])
        return result

    def run(self, arr: np.ndarray) -> list[np.ndarray]:
        self.set_input(arr)
        self.invoke()
        return self.get_outputs()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.device} {self.model_path}>"


__all__ = ["AcceleratorSettings", "Backend", "BackendError", "BackendSettings", "TensorInfo"]
