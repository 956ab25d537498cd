"""Check that an Edge-TPU-compiled .tflite is the compiled twin of a bundle's INT8 model.

`edgetpu_compiler` runs only on x86-64 Linux, so the compiled file often comes from another host
(docs/EDGETPU_COMPILE.md). Before it goes into a signed bundle it must (1) really be compiled: its
graph holds the `edgetpu-custom-op` custom op, and (2) be the same network: inputs and outputs equal to
the INT8 model's by position, name, shape, dtype and quantization. The compiler keeps all of these (it
only renumbers tensors), so any difference means another network or another conversion of it.

Both files are read through builder.edgetpu.tflite_inspect: op codes from the flatbuffer and tensor
details from an Interpreter that is never allocated or invoked (a compiled model cannot run here
without the Edge TPU delegate, but it loads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.edgetpu.tflite_inspect import EDGETPU_CUSTOM_OP, InspectError, inspect_model


class AttachError(ValueError):
    """The file is not an acceptable compiled twin; the message says what differs."""


@dataclass(frozen=True)
class CompiledCheck:
    """What the accepted compiled model contains."""

    tpu_ops: int  # edgetpu-custom-op nodes (one per Edge TPU subgraph)
    cpu_ops: list[str]  # ops left outside them, run by the CPU


def _tensor_label(kind: str, i: int, t: dict[str, Any]) -> str:
    return f"{kind} #{i} {t['name']!r}"


def _quant_differs(a: float | int | None, b: float | int | None) -> bool:
    if a is None or b is None:
        return a is not b
    return not math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)


def _q(v: float | int | None) -> str:
    return "none (not quantized)" if v is None else str(v)


def tensor_differences(kind: str, reference: list[dict[str, Any]], compiled: list[dict[str, Any]]) -> list[str]:
    """Each way `compiled`'s inputs (or outputs) differ from `reference`'s, one line per difference."""
    if len(reference) != len(compiled):
        names = [t["name"] for t in compiled]
        return [f"{len(compiled)} {kind}s {names}, the INT8 model has {len(reference)} "
                f"{[t['name'] for t in reference]}"]
    diffs: list[str] = []
    for i, (ref, new) in enumerate(zip(reference, compiled, strict=True)):
        label = _tensor_label(kind, i, ref)
        if ref["name"] != new["name"]:
            diffs.append(f"{label}: named {new['name']!r} in the compiled model")
        if list(ref["shape"]) != list(new["shape"]):
            diffs.append(f"{label}: shape {list(new['shape'])}, the INT8 model has {list(ref['shape'])}")
        if ref["dtype"] != new["dtype"]:
            diffs.append(f"{label}: dtype {new['dtype']}, the INT8 model has {ref['dtype']}")
        for field in ("scale", "zero_point"):
            if _quant_differs(ref[field], new[field]):
                diffs.append(f"{label}: {field.replace('_', ' ')} {_q(new[field])}, the INT8 model has {_q(ref[field])}")
    return diffs


def _inspect(path: Path, what: str) -> dict[str, Any]:
    try:
        return inspect_model(path)
    except InspectError as exc:
        raise AttachError(f"{what}: {exc}") from exc


def check_compiled(reference: Path, compiled: Path, allow_partial: bool = False) -> CompiledCheck:
    """Accept `compiled` as the Edge TPU build of `reference`, or raise AttachError saying why not.

    Ops outside the custom op run on the CPU (the compiler stopped mapping there); that is refused
    unless `allow_partial`, like a compile here with the compiler's own log.
    """
    new = _inspect(compiled, "compiled model")
    if not new["edgetpu_compiled"]:
        ops = ", ".join(f"{k} {v}" for k, v in new["op_counts"].items())
        raise AttachError(f"{compiled} is not compiled for the Edge TPU: no {EDGETPU_CUSTOM_OP!r} op among its ops "
                          f"({ops}); run edgetpu_compiler on it first (docs/EDGETPU_COMPILE.md)")
    ref = _inspect(reference, "INT8 model")
    diffs = tensor_differences("input", ref["inputs"], new["inputs"])
    diffs += tensor_differences("output", ref["outputs"], new["outputs"])
    if diffs:
        raise AttachError(f"{compiled} is not a compiled {reference.name}: " + "; ".join(diffs))
    cpu = list(new["cpu_ops"] or [])
    if cpu and not allow_partial:
        raise AttachError(f"{compiled}: {len(cpu)} op(s) outside the Edge TPU op would run on the CPU: "
                          f"{', '.join(sorted(set(cpu)))} (use --allow-partial to accept)")
    return CompiledCheck(tpu_ops=int(new["tpu_ops"]), cpu_ops=cpu)
