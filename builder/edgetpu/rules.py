"""The Edge TPU compiler's mapping rules as data, each with its source, and the partition they imply.

Pure functions over the op entries of `tflite_inspect` (op name, version, input/output tensors with dtype,
shape, const, dynamic). Every rule names where it comes from: a line of Coral's "Supported operations"
table and model requirements (coral.ai/docs/edgetpu/models-intro, "MI" below), a maintainer's answer in
google-coral/edgetpu, or an observation in one of Google's compiled twins in tests/data/coral (the CPU
model next to its `*_edgetpu.tflite`, compiled by edgetpu_compiler 16). Rules the docs state but a static
reader cannot decide (a constant's values, fused activations, the undocumented resize size limit) are
listed in CAVEATS and printed, never silently guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
MI = "coral.ai/docs/edgetpu/models-intro"

# Ops the Edge TPU compiler maps (MI, "Supported operations"). LSTM: unidirectional only, since compiler 16
# (MI; google-coral/edgetpu#156, 2021-07: "the latest compiler release supports LSTM (Unidirectional
# only)"); BIDIRECTIONAL_SEQUENCE_LSTM stays out. No twin here has one. TRANSPOSE is deliberately
# absent: the compiler left every TRANSPOSE of the YOLOv8/YOLO11 heads on the CPU in our measurements.
EDGETPU_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM",
    "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1",
    "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH",
    "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE_CONV",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
}
# Highest op versions known to be accepted by edgetpu_compiler 16 (measured: our INT8 YOLO-NAS body and
# Coral's published models). RESIZE_*: higher versions are rejected "Operation version not supported"
# (google-coral/edgetpu#206, #420).
MAX_KNOWN_VERSION = {
    "CONV_2D": 3, "TRANSPOSE_CONV": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "CONCATENATION": 2, "MAX_POOL_2D": 2,
    "AVERAGE_POOL_2D": 2, "PAD": 2, "QUANTIZE": 2, "MUL": 2, "SUB": 2, "FULLY_CONNECTED": 4, "LOGISTIC": 2,
    "SOFTMAX": 2, "RESHAPE": 1, "RESIZE_BILINEAR": 3, "RESIZE_NEAREST_NEIGHBOR": 3, "MEAN": 2,
}
EIGHT_BIT = ("int8", "uint8")

Op = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    id: str
    ops: frozenset[str] | None  # None: applies to every op
    text: str
    source: str
    check: Callable[[Op], str | None]  # a detail when the op breaks the rule, else None


def _acts(op: Op) -> list[dict[str, Any]]:
    return [t for t in op["inputs"] + op["outputs"] if not t["const"]]


def _outer_dims(shape: list[int] | None) -> list[int]:
    return [d for d in (shape or [])[:-3] if d != 1]


def _supported(op: Op) -> str | None:
    if op["op"] == "CUSTOM" or op.get("custom_code"):
        return None if op.get("custom_code") == EDGETPU_CUSTOM_OP else f"custom op {op.get('custom_code')!r}"
    return None if op["op"] in EDGETPU_OPS else f"{op['op']} is not in the supported-operations table"


def _version(op: Op) -> str | None:
    maxv = MAX_KNOWN_VERSION.get(op["op"])
    if maxv is not None and op["version"] is not None and op["version"] > maxv:
        return f"version {op['version']} above {maxv}"
    return None


def _eight_bit(op: Op) -> str | None:
    bad = sorted({t["dtype"] for t in _acts(op) if t["dtype"] not in EIGHT_BIT})
    return f"{'/'.join(bad)} activation" if bad else None


def _innermost_3(op: Op) -> str | None:
    for t in _acts(op):
        if _outer_dims(t["shape"]):
            return f"tensor {t['shape']} has non-unit dims outside the innermost 3"
    return None


def _static(op: Op) -> str | None:
    return "dynamic shape" if any(t["dynamic"] for t in op["inputs"] + op["outputs"]) else None


def _concat_consts(op: Op) -> str | None:
    n_const = sum(1 for t in op["inputs"] if t["const"])
    return f"{len(op['inputs'])} inputs with a constant one" if n_const and len(op["inputs"]) != 2 else None


def _xy_only(op: Op) -> str | None:
    # PAD/MEAN on NHWC: only H and W (x/y) may change between input and output; read from the shapes,
    # since the paddings/axes constants' values are not in the op entries.
    ins = [t for t in op["inputs"] if not t["const"]]
    if not ins or not op["outputs"]:
        return None
    a, b = list(ins[0]["shape"] or []), list(op["outputs"][0]["shape"] or [])
    if len(a) != 4:
        return None
    kept = [b[0], b[3]] if len(b) == 4 else b  # MEAN without keep_dims drops H and W
    return None if kept == [a[0], a[3]] else f"{a} -> {b} changes batch or channels"


def _softmax_1d(op: Op) -> str | None:
    shape = op["inputs"][0]["shape"] if op["inputs"] else []
    n = 1
    for d in shape or []:
        n *= d
    return None if sum(1 for d in shape or [] if d != 1) <= 1 and n <= 16000 else f"input {shape}"


def _fc_1d_output(op: Op) -> str | None:
    shape = op["outputs"][0]["shape"] if op["outputs"] else []
    return None if sum(1 for d in shape or [] if d != 1) <= 1 else f"output {shape}"


def _ops(*names: str) -> frozenset[str]:
    return frozenset(names)


RULES: list[Rule] = [
    Rule("supported-op", None, "op type in the supported-operations table", f"{MI} (Supported operations)", _supported),
    Rule("op-version", None, "op version known to compiler 16",
         "measured (our INT8 models, Coral's models); google-coral/edgetpu#206, #420", _version),
    Rule("8-bit", None, "activations are int8/uint8 (int32 only as constants: bias, shapes)",
         f"{MI} (Model requirements: 8-bit quantized tensors)", _eight_bit),
    Rule("innermost-3-dims", None, "only the 3 innermost dimensions may be > 1",
         f"{MI} (Model requirements: 1-, 2- or 3-dimensional tensors)", _innermost_3),
    Rule("static-shape", None, "tensor sizes constant at compile time", f"{MI} (Model requirements)", _static),
    Rule("concat-const", _ops("CONCATENATION"), "a constant input only as one of exactly 2 inputs (zero padding)",
         f"{MI} (Concatenation row)", _concat_consts),
    Rule("pad-xy", _ops("PAD"), "padding along x and/or y only", f"{MI} (Pad row)", _xy_only),
    Rule("mean-xy", _ops("MEAN"), "reduction along x and/or y only", f"{MI} (Mean row)", _xy_only),
    Rule("softmax-1d", _ops("SOFTMAX"), "1-D input, at most 16,000 elements", f"{MI} (Softmax row)", _softmax_1d),
    Rule("fc-1d", _ops("FULLY_CONNECTED"), "output tensor is one-dimensional", f"{MI} (FullyConnected row)",
         _fc_1d_output),
]

# What the docs state but this reader cannot decide; shown with the report so nobody mistakes it for a check.
CAVEATS = {
    "RESIZE_BILINEAR": f"size-dependent limit without a documented threshold ({MI}, ResizeBilinear row; "
                       "google-coral/edgetpu#31: 512x512 unmapped, 128x128 mapped); 2x upscales 6->48 mapped "
                       "in movenet_single_pose_lightning_ptq (ops #71, #75, #79)",
    "RESIZE_NEAREST_NEIGHBOR": f"size-dependent limit without a documented threshold ({MI}, "
                               "ResizeNearestNeighbor row; google-coral/edgetpu#187: 256x256 UNet unmapped, 128x128 mapped)",
    "CONCATENATION": f"no fused activation; a constant input must be all zeros ({MI}): not read here",
    "AVERAGE_POOL_2D": f"no fused activation ({MI}): not read here",
    "MAX_POOL_2D": f"no fused activation ({MI}): not read here",
    "LSTM": f"unidirectional only, compiler 16 ({MI}; google-coral/edgetpu#156); no twin carries one",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "compiler 16 (google-coral/edgetpu#156); large inputs fail to compile "
                                    "(google-coral/edgetpu#598: width ~1000 fails, below ~900 compiles); no twin carries one",
}

CUT_RULE = Rule(
    "single-cut", None,
    "one Edge TPU partition: an op whose input comes from a CPU op after the partition runs on the CPU; "
    "supported ops that do not depend on the cut still map",
    f"{MI} (Compiling: the compiler can partition once, the first unsupported op and what follows run on "
    "the CPU); observed in movenet_single_pose_lightning_ptq_edgetpu: ops #100-#104 and #106-#111 "
    "(independent of the ARG_MAX #89 cut) are inside the edgetpu-custom-op",
    lambda op: None,
)
LEAD_RULE = Rule(
    "cpu-prefix", None, "unsupported ops fed only by graph inputs run on the CPU before the partition",
    "observed in movenet_single_pose_lightning_ptq_edgetpu: CAST #0, QUANTIZE #1 stay on the CPU, "
    "SUB #2 onwards map", lambda op: None,
)


def violations(op: Op) -> list[Rule]:
    """The rules this op breaks, in table order (empty: the compiler should map it on its own)."""
    return [r for r in RULES if (r.ops is None or op["op"] in r.ops) and r.check(op) is not None]


def explain(op: Op) -> list[dict[str, str]]:
    return [{"rule": r.id, "detail": r.check(op) or "", "source": r.source} for r in violations(op)]


def partition(ops: list[Op]) -> list[str]:
    """Per op, in execution order: "lead" (CPU, before the partition), "tpu" or "cpu" (after the cut).

    An op maps when it breaks no rule and every activation input comes from a graph input, a lead op or
    a mapped op; an op fed by a CPU op after the partition can't map (the compiler cuts once)."""
    where: dict[int, str] = {}  # tensor index -> placement of its producer
    out: list[str] = []
    for op in ops:
        srcs = {where.get(t["index"], "input") for t in op["inputs"] if not t["const"]}
        bad = bool(violations(op))
        if bad and srcs <= {"input", "lead"}:
            place = "lead"
        elif not bad and "cpu" not in srcs:
            place = "tpu"
        else:
            place = "cpu"
        out.append(place)
        for t in op["outputs"]:
            where[t["index"]] = place
    return out
