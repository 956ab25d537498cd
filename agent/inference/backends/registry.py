"""Every backend the agent can run, keyed by its config `type`.

Adding one (Hailo, a GPU delegate) = a module with a Backend subclass and its BackendSettings model, plus
its entry in BACKENDS and in BackendSettingsUnion below. The bundle must carry a model file for it
(Backend.model names the Manifest.models field).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter

from agent.inference.backends.base import Backend, BackendError
from agent.inference.backends.cpu import CpuBackend, CpuConfig
from agent.inference.backends.edgetpu import EdgeTpuBackend, EdgeTpuConfig

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (EdgeTpuBackend, CpuBackend)}
# The backend every bundle can run (its `cpu` model): the fallback when the preferred one cannot.
FALLBACK = CpuBackend.name
# One config section per backend, told apart by `type`.
BackendSettingsUnion = Annotated[EdgeTpuConfig | CpuConfig, Field(discriminator="type")]
_SETTINGS: TypeAdapter[EdgeTpuConfig | CpuConfig] = TypeAdapter(BackendSettingsUnion)


def backend_class(type_: str) -> type[Backend]:
    try:
        return BACKENDS[type_]
    except KeyError:
        raise BackendError(f"unknown backend type {type_!r} (known: {', '.join(BACKENDS)})") from None


def default_settings(type_: str) -> EdgeTpuConfig | CpuConfig:
    """Backend `type_`'s config section with every default."""
    return _SETTINGS.validate_python({"type": type_})


__all__ = ["BACKENDS", "FALLBACK", "BackendSettingsUnion", "backend_class", "default_settings"]
