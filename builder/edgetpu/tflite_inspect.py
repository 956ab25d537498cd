"""Static analysis of any .tflite file: ops, tensors, quantization, Edge TPU readiness.

Reads ops, op versions, tensors and buffer sizes from the flatbuffer (builder.edgetpu.flatbuffer) and the
input/output quantization from the TFLite interpreter, created without `allocate_tensors()` so that
Edge-TPU-compiled files with their custom op load too.

Readiness applies the compiler's rules kept as data with their sources in builder.edgetpu.rules (Coral's
model requirements and supported-operations table, and what Google's compiled twins show): each op's
placement (CPU lead, Edge TPU, CPU after the single cut) comes with the rule that decided it. The
prediction matches the compiled twins in tests/data/coral op for op (tests/test_readiness_twins.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.inference import tflite
from builder.edgetpu import rules
from builder.edgetpu.flatbuffer import FbModel, FbOp, FlatbufferError, read_model
from builder.edgetpu.rules import EDGETPU_CUSTOM_OP, EDGETPU_OPS, MAX_KNOWN_VERSION

ON_CHIP_BYTES = 8 * 1024 * 1024  # Edge TPU SRAM for caching parameters (a bit less is usable)
__all__ = ["EDGETPU_CUSTOM_OP", "EDGETPU_OPS", "MAX_KNOWN_VERSION", "InspectError", "inspect_model", "op_problems",
           "readiness"]


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


def op_problems(op: dict[str, Any]) -> list[str]:
    """Why the Edge TPU compiler would not map this op on its own (empty: it should map)."""
    return [f"{e['rule']}: {e['detail']}" for e in rules.explain(op)]


def _decision(op: dict[str, Any], place: str, cut: int | None) -> dict[str, str]:
    """The rule behind one op's placement and its source (for the report)."""
    broken = rules.explain(op)
    if broken:
        return {"rule": broken[0]["rule"], "detail": broken[0]["detail"], "source": broken[0]["source"]}
    if place == "tpu":
        return {"rule": "mapped", "detail": "see caveat" if op["op"] in rules.CAVEATS else "", "source": rules.MI}
    return {"rule": rules.CUT_RULE.id, "detail": f"depends on a CPU op after the cut (op #{cut})",
            "source": rules.CUT_RULE.source}


def _rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    places = rules.partition(info["ops"])
    cut = next((i for i, p in enumerate(places) if p == "cpu"), None)
    rows = []
    for op, place in zip(info["ops"], places, strict=True):
        rows.append({"index": op["index"], "op": op["op"], "version": op["version"], "problems": op_problems(op),
                     "dtypes": sorted({t["dtype"] for t in op["inputs"] + op["outputs"] if t["dtype"]}),
                     "output_shapes": [t["shape"] for t in op["outputs"]],
                     "predicted": "tpu" if place == "tpu" else "cpu", "placement": place,
                     **_decision(op, place, cut)})
    return rows


def readiness(path: Path | str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predicted Edge TPU mapping of an uncompiled INT8 model, without the compiler: each op's placement
    with the rule that decided it and that rule's source (builder.edgetpu.rules)."""
    info = info or inspect_model(path)
    if info["edgetpu_compiled"]:
        return {"compiled": True, "summary": f"already compiled: {info['tpu_ops']} Edge TPU op(s), CPU ops {info['cpu_ops']}",
                "tpu_ops": info["tpu_ops"], "cpu_ops": len(info["cpu_ops"] or [])}
    rows = _rows(info)
    n = len(rows)
    n_tpu = sum(1 for r in rows if r["predicted"] == "tpu")
    lead = sum(1 for r in rows if r["placement"] == "lead")
    cut = next((r for r in rows if r["placement"] == "cpu"), None)
    float_tensors = sum(1 for op in info["ops"] for t in op["inputs"] + op["outputs"] if t["dtype"] in ("float32", "float16"))
    params = int(info["parameter_bytes"])
    pct = 100.0 * n_tpu / n if n else 0.0
    summary = (
        f"{n_tpu}/{n} ops predicted on the Edge TPU ({pct:.0f}%), {n - n_tpu} on the CPU"
        + (f"; {lead} leading op(s) on the CPU" if lead else "")
        + (f"; cut at op #{cut['index']} {cut['op']} ({cut['rule']}: {cut['detail']})" if cut else "")
        + f"; parameters {params / 2**20:.1f} MiB "
        + ("(fit the ~8 MB on-chip cache)" if params <= ON_CHIP_BYTES else "(above the ~8 MB on-chip cache: the rest streams from host memory each inference)")
    )
    return {
        "compiled": False,
        "ops_total": n,
        "tpu_ops": n_tpu,
        "cpu_ops": n - n_tpu,
        "cpu_op_types": [r["op"] for r in rows if r["predicted"] == "cpu"],
        "cpu_decisions": [{k: r[k] for k in ("index", "op", "placement", "rule", "detail", "source")}
                          for r in rows if r["predicted"] == "cpu"],
        "tpu_percent": pct,
        "first_cpu_op": cut["index"] if cut else (0 if lead else None),
        "unsupported_ops": sorted({r["op"] for r in rows if r["problems"]}),
        "caveats": {name: text for name, text in rules.CAVEATS.items() if any(r["op"] == name for r in rows)},
        "float_tensors": float_tensors,
        "quantized_io": all(t["dtype"] in ("uint8", "int8") for t in info["inputs"] + info["outputs"]),
        "parameter_bytes": params,
        "on_chip_bytes": ON_CHIP_BYTES,
        "fits_on_chip": params <= ON_CHIP_BYTES,
        "ops": rows,
        "summary": summary,
    }
