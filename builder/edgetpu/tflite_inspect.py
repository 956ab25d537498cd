"""Static analysis of any .tflite file: ops, tensors, quantization, Edge TPU readiness.

Reads ops, op versions, tensors and buffer sizes from the flatbuffer (builder.edgetpu.flatbuffer) and the
input/output quantization from the TFLite interpreter, created without `allocate_tensors()` so that
Edge-TPU-compiled files with their custom op load too.

Readiness follows Coral's model requirements (coral.ai/docs/edgetpu/models-intro): supported ops,
quantized uint8/int8 tensors, at most 3 non-unit dimensions per activation, static shapes, op versions
the compiler knows, parameters against the ~8 MB on-chip cache. The compiler maps ops to the Edge TPU
from the start of the graph up to the first op it cannot map; that op and everything after it run on
the CPU (one TPU partition: the "single-partition rule").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.inference import tflite
from builder.edgetpu.flatbuffer import FbModel, FbOp, FlatbufferError, read_model

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
ON_CHIP_BYTES = 8 * 1024 * 1024  # Edge TPU SRAM for caching parameters (a bit less is usable)

# Ops the Edge TPU compiler maps (coral.ai "Supported operations"). TRANSPOSE is deliberately absent:
# the compiler left every TRANSPOSE of the YOLOv8/YOLO11 heads on the CPU in our measurements.
EDGETPU_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM",
    "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1",
    "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH",
    "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE_CONV",
}
# Highest op versions known to be accepted by edgetpu_compiler 16 (measured: our INT8 YOLO-NAS body
# and Coral's published models). Newer TensorFlow converters can emit higher versions for some ops
# (e.g. with int16 or int4 support); those are flagged as "not known to be accepted".
MAX_KNOWN_VERSION = {
    "CONV_2D": 3, "TRANSPOSE_CONV": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "CONCATENATION": 2, "MAX_POOL_2D": 2,
    "AVERAGE_POOL_2D": 2, "PAD": 2, "QUANTIZE": 2, "MUL": 2, "SUB": 2, "FULLY_CONNECTED": 4, "LOGISTIC": 2,
    "SOFTMAX": 2, "RESHAPE": 1, "RESIZE_BILINEAR": 3, "RESIZE_NEAREST_NEIGHBOR": 3, "MEAN": 2,
}


class InspectError(ValueError):
    pass


# ---------------------------------------------------------------------------------------- inspection


def _interpreter(path: Path) -> Any:
    tflite.require_runtime()
    try:
        return tflite.Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:
        raise InspectError(f"{path}: cannot read TFLite model: {exc}") from exc


def _tensor_entry(d: dict[str, Any]) -> dict[str, Any]:
    t = tflite.tensor_info(d)
    q = t.quant
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name,
            "scale": q[0] if q else None, "zero_point": q[1] if q else None}


def inspect_model(path: Path | str) -> dict[str, Any]:
    """Every op (type, version, dtypes, shapes), inputs/outputs with quantization, Edge TPU status."""
    path = Path(path)
    if not path.is_file():
        raise InspectError(f"{path}: no such file")
    try:
        fb = read_model(path)
    except FlatbufferError as exc:
        raise InspectError(str(exc)) from exc
    interp = _interpreter(path)  # the runtime must load it; its I/O details carry the quantization
    ops = [_op_entry(i, op, fb) for i, op in enumerate(fb.ops)]
    hist: dict[str, int] = {}
    for o in ops:
        label = o["custom_code"] or o["op"] if o["op"] == "CUSTOM" else o["op"]
        hist[label] = hist.get(label, 0) + 1
    tpu_ops = [o for o in ops if o["custom_code"] == EDGETPU_CUSTOM_OP]
    compiled = bool(tpu_ops)
    cpu_ops = [o for o in ops if o["custom_code"] != EDGETPU_CUSTOM_OP]
    param_bytes = sum(t.buffer_bytes for t in fb.tensors)
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "edgetpu_compiled": compiled,
        "kind": "edgetpu" if compiled else "cpu",
        "op_counts": dict(sorted(hist.items(), key=lambda kv: -kv[1])),
        "tpu_ops": len(tpu_ops),
        "cpu_ops": [o["op"] if o["op"] != "CUSTOM" else (o["custom_code"] or "CUSTOM") for o in cpu_ops] if compiled else None,
        "inputs": [_tensor_entry(d) for d in interp.get_input_details()],
        "outputs": [_tensor_entry(d) for d in interp.get_output_details()],
        "parameter_bytes": param_bytes,
        "subgraphs": fb.subgraphs,
        "ops": ops,
    }


def _op_entry(index: int, op: FbOp, fb: FbModel) -> dict[str, Any]:
    def desc(ix: int) -> dict[str, Any]:
        t = fb.tensors[ix]
        return {"index": ix, "dtype": t.dtype, "shape": t.shape, "const": bool(t.buffer_bytes), "dynamic": t.dynamic}

    return {"index": index, "op": op.op, "custom_code": op.custom_code, "version": op.version,
            "inputs": [desc(x) for x in op.inputs], "outputs": [desc(x) for x in op.outputs]}


def _non_unit_dims(shape: list[int] | None) -> int:
    return sum(1 for d in (shape or []) if d != 1)


def op_problems(op: dict[str, Any]) -> list[str]:
    """Why the Edge TPU compiler would not map this op (empty: it should map)."""
    name = op["op"]
    probs: list[str] = []
    if name == "CUSTOM":
        if op["custom_code"] != EDGETPU_CUSTOM_OP:
            probs.append(f"custom op {op['custom_code']!r}")
        return probs
    if name not in EDGETPU_OPS:
        probs.append("op not supported by the Edge TPU")
    maxv = MAX_KNOWN_VERSION.get(name)
    if maxv is not None and op["version"] is not None and op["version"] > maxv:
        probs.append(f"version {op['version']} above {maxv} (not known to be accepted by compiler 16)")
    for t in op["inputs"] + op["outputs"]:
        if t["dtype"] in ("float32", "float16"):
            probs.append(f"float tensor ({t['dtype']})")
            break
    for t in op["inputs"] + op["outputs"]:
        if not t["const"] and _non_unit_dims(t["shape"]) > 3:
            probs.append(f"activation with {_non_unit_dims(t['shape'])} non-unit dims {t['shape']} (max 3)")
            break
    if any(t["dynamic"] for t in op["inputs"] + op["outputs"]):
        probs.append("dynamic shape")
    return probs


def readiness(path: Path | str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predicted Edge TPU mapping of an uncompiled INT8 model, without the compiler."""
    info = info or inspect_model(path)
    if info["edgetpu_compiled"]:
        return {"compiled": True, "summary": f"already compiled: {info['tpu_ops']} Edge TPU op(s), CPU ops {info['cpu_ops']}",
                "tpu_ops": info["tpu_ops"], "cpu_ops": len(info["cpu_ops"] or [])}
    rows = []
    for op in info["ops"]:
        rows.append({"index": op["index"], "op": op["op"], "version": op["version"], "problems": op_problems(op),
                     "dtypes": sorted({t["dtype"] for t in op["inputs"] + op["outputs"] if t["dtype"]}),
                     "output_shapes": [t["shape"] for t in op["outputs"]]})
    n = len(rows)
    # One Edge TPU partition: unsupported ops at the very start (e.g. a float input's CAST/QUANTIZE)
    # stay on the CPU in front of it; the partition then runs until the first unsupported op, and
    # that op and everything after it run on the CPU.
    start = next((r["index"] for r in rows if not r["problems"]), n)
    end = next((r["index"] for r in rows[start:] if r["problems"]), n)
    first_bad = end if end < n else (0 if start > 0 else None)
    n_tpu = end - start
    for r in rows:
        r["predicted"] = "tpu" if start <= r["index"] < end else "cpu"
    unsupported = sorted({r["op"] for r in rows if r["problems"]})
    float_tensors = sum(1 for op in info["ops"] for t in op["inputs"] + op["outputs"] if t["dtype"] in ("float32", "float16"))
    io_ok = all(t["dtype"] in ("uint8", "int8") for t in info["inputs"] + info["outputs"])
    params = int(info["parameter_bytes"])
    pct = 100.0 * n_tpu / n if n else 0.0
    summary = (
        f"{n_tpu}/{n} ops predicted on the Edge TPU ({pct:.0f}%)"
        + (f"; {start} leading op(s) on the CPU" if start else "")
        + (f"; CPU from op #{end} {rows[end]['op']}: {'; '.join(rows[end]['problems'])}" if end < n else "")
        + f"; parameters {params / 2**20:.1f} MiB "
        + ("(fit the ~8 MB on-chip cache)" if params <= ON_CHIP_BYTES else "(above the ~8 MB on-chip cache: the rest streams from host memory each inference)")
    )
    return {
        "compiled": False,
        "ops_total": n,
        "tpu_ops": n_tpu,
        "cpu_ops": n - n_tpu,
        "tpu_percent": pct,
        "first_cpu_op": first_bad,
        "unsupported_ops": unsupported,
        "float_tensors": float_tensors,
        "quantized_io": io_ok,
        "parameter_bytes": params,
        "on_chip_bytes": ON_CHIP_BYTES,
        "fits_on_chip": params <= ON_CHIP_BYTES,
        "ops": rows,
        "summary": summary,
    }
