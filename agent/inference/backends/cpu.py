"""TFLite on the CPU with XNNPACK (ai-edge-litert applies it by default) and configurable threads."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from agent.config import CpuConfig
from agent.inference.backends.base import Backend, BackendError


class CpuBackend(Backend):
    name = "cpu"

    @classmethod
    def open(cls, model_path: Path | str, cfg: CpuConfig | BaseModel | None = None) -> CpuBackend:
        from agent.inference import tflite

        cfg = cfg if isinstance(cfg, CpuConfig) else CpuConfig()
        kwargs: dict[str, object] = {"model_path": str(model_path), "num_threads": cfg.threads}
        resolver = getattr(tflite, "OpResolverType", None)
        if not cfg.xnnpack and resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            interp = tflite.Interpreter(**kwargs)
            interp.allocate_tensors()
        except (RuntimeError, ValueError, OSError) as exc:
            # e.g. "Encountered unresolved custom op: edgetpu-custom-op" for a TPU-compiled file.
            raise BackendError(f"cannot load {Path(model_path).name} on the CPU: {exc}") from exc
        dev = f"cpu:{cfg.threads}t" + ("" if cfg.xnnpack else ":noxnn")
        return cls(interp, dev, str(model_path))
