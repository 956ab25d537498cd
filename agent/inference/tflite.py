"""The one TFLite runtime shim: ai-edge-litert, else tflite-runtime.

Every part of the project that runs a .tflite file loads it and reads its tensors through here, so the
choice of runtime, the loading options and the reading of quantization parameters live in one place.
Neither runtime imports TensorFlow.

Public API:
  load_interpreter(path, threads=None, delegates=None, xnnpack=True) -> an allocated Interpreter
  input_tensors(interp) / output_tensors(interp) -> list[TensorInfo] (index, name, shape, dtype, scale,
      zero_point, .quant)
  tensor_info(detail) -> TensorInfo of one raw get_*_details() entry
  quant_params(detail) -> (scale, zero_point) | None
  run(interp, x) -> every output of one inference (copies, in output order)
  Interpreter, load_delegate, RUNTIME, RuntimeMissing, require_runtime
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.inference.tensors import TensorInfo

RUNTIME: str
try:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType, load_delegate

    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover - depends on the host
    try:
        from tflite_runtime.interpreter import (  # type: ignore[no-redef]
            Interpreter,
            OpResolverType,
            load_delegate,
        )

        RUNTIME = "tflite-runtime"
    except ImportError:
        Interpreter = None  # type: ignore[assignment,misc]
        OpResolverType = None  # type: ignore[assignment,misc]
        load_delegate = None  # type: ignore[assignment]
        RUNTIME = "none"


class RuntimeMissing(ImportError):
    pass


def require_runtime() -> None:
    if Interpreter is None:
        raise RuntimeMissing("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)")


def load_interpreter(
    path: str | Any,
    threads: int | None = None,
    delegates: Sequence[Any] | None = None,
    xnnpack: bool = True,
) -> Any:
    """An Interpreter with tensors allocated (raises ValueError/RuntimeError on a bad model).

    `xnnpack=False` runs the plain builtin kernels (the runtime applies XNNPACK by default)."""
    require_runtime()
    kwargs: dict[str, Any] = {"model_path": str(path)}
    if threads is not None:
        kwargs["num_threads"] = int(threads)
    if delegates:
        kwargs["experimental_delegates"] = list(delegates)
    if not xnnpack and OpResolverType is not None:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(**kwargs)
    interp.allocate_tensors()
    return interp


def make_interpreter(model_path: str, num_threads: int | None = None, delegates: list[Any] | None = None) -> Any:
    """Old name of load_interpreter, kept until its last callers have moved (backends/probe_child.py,
    tests/helpers_updates.py, tests/test_tpu_probe.py); then delete it."""
    return load_interpreter(model_path, num_threads, delegates)


def quant_params(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero_point) of a tensor detail, or None when the tensor is not quantized.

    Reads `quantization_parameters` (per-tensor inputs/outputs have exactly one scale); falls back to the
    legacy `quantization` tuple.
    """
    qp = detail.get("quantization_parameters") or {}
    scales = qp.get("scales")
    if scales is not None and len(scales) >= 1:
        return float(scales[0]), int(qp["zero_points"][0])
    q = detail.get("quantization")
    if q and q[0]:
        return float(q[0]), int(q[1])
    return None


def tensor_info(detail: dict[str, Any]) -> TensorInfo:
    """One get_input_details()/get_output_details() entry as a TensorInfo."""
    scale, zero_point = quant_params(detail) or (0.0, 0)
    return TensorInfo(
        index=int(detail["index"]),
        name=str(detail["name"]),
        shape=tuple(int(x) for x in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=scale,
        zero_point=zero_point,
    )


def input_tensors(interp: Any) -> list[TensorInfo]:
    return [tensor_info(d) for d in interp.get_input_details()]


def output_tensors(interp: Any) -> list[TensorInfo]:
    return [tensor_info(d) for d in interp.get_output_details()]


def run(interp: Any, x: np.ndarray) -> list[np.ndarray]:
    """Set the single input (reshaped and cast to the tensor), invoke, return every output (copies, in
    output order)."""
    inp = input_tensors(interp)[0]
    interp.set_tensor(inp.index, np.asarray(x).reshape(inp.shape).astype(inp.dtype, copy=False))
    interp.invoke()
    return [interp.get_tensor(t.index) for t in output_tensors(interp)]


__all__ = [
    "RUNTIME",
    "Interpreter",
    "RuntimeMissing",
    "TensorInfo",
    "input_tensors",
    "load_delegate",
    "load_interpreter",
    "make_interpreter",
    "output_tensors",
    "quant_params",
    "require_runtime",
    "run",
    "tensor_info",
]
