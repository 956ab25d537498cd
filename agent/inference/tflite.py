"""The one TFLite runtime shim: ai-edge-litert, else tflite-runtime.

Every part of the project that runs a .tflite file imports `Interpreter` / `load_delegate` from here,
so the choice of runtime lives in one place. Neither runtime imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

RUNTIME: str
try:
    from ai_edge_litert.interpreter import Interpreter, load_delegate

    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover - depends on the host
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate  # type: ignore[no-redef]

        RUNTIME = "tflite-runtime"
    except ImportError:
        Interpreter = None  # type: ignore[assignment,misc]
        load_delegate = None  # type: ignore[assignment]
        RUNTIME = "none"


class RuntimeMissing(ImportError):
    pass


def require_runtime() -> None:
    if Interpreter is None:
        raise RuntimeMissing("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)")


def make_interpreter(
    model_path: str,
    num_threads: int | None = None,
    delegates: list[Any] | None = None,
) -> Any:
    """An Interpreter with tensors allocated (raises ValueError/RuntimeError on a bad model)."""
    require_runtime()
    kwargs: dict[str, Any] = {"model_path": str(model_path)}
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    if delegates:
        kwargs["experimental_delegates"] = delegates
    interp = Interpreter(**kwargs)
    interp.allocate_tensors()
    return interp


def quant_params(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero_point) of a tensor detail, or None when the tensor is not quantized.

    Reads `quantization_parameters` (per-tensor outputs have exactly one scale); falls back to the
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


def run(interp: Any, x: Any) -> list[Any]:
    """Set the single input, invoke, return every output (copies, in output-detail order)."""
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


__all__ = ["RUNTIME", "Interpreter", "RuntimeMissing", "load_delegate", "make_interpreter", "quant_params", "run"]
