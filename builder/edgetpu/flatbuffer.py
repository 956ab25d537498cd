"""What the TFLite flatbuffer says that the interpreter's public API does not: the op list with op codes,
versions, custom codes and tensor indices, and every tensor's buffer size and shape signature.

Read through LiteRT's generated schema module (`ai_edge_litert.schema_py_generated`, the official
flatbuffers bindings of the TFLite schema), so no slot numbers are hand-coded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_edge_litert import schema_py_generated as schema

BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
TENSOR_TYPES = {schema.TensorType.FLOAT32: "float32", schema.TensorType.FLOAT16: "float16",
                schema.TensorType.INT32: "int32", schema.TensorType.UINT8: "uint8", schema.TensorType.INT64: "int64",
                schema.TensorType.STRING: "string", schema.TensorType.BOOL: "bool", schema.TensorType.INT16: "int16",
                schema.TensorType.COMPLEX64: "complex64", schema.TensorType.INT8: "int8",
                schema.TensorType.FLOAT64: "float64"}


class FlatbufferError(ValueError):
    pass


@dataclass(frozen=True)
class FbOp:
    op: str  # builtin name (CONV_2D, ...); a custom op's name is its custom code, as the interpreter reports it
    custom_code: str | None
    version: int
    inputs: list[int]  # tensor indices; -1 (optional input absent) dropped
    outputs: list[int]


@dataclass(frozen=True)
class FbTensor:
    shape: list[int]
    dtype: str
    buffer_bytes: int  # constant data size (0: an activation)
    shape_signature: list[int]  # -1 marks a dynamic dimension

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape_signature)


@dataclass(frozen=True)
class FbModel:
    ops: list[FbOp]  # subgraph 0, execution order
    tensors: list[FbTensor]
    subgraphs: int


def read_model(path: Path) -> FbModel:
    buf = Path(path).read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise FlatbufferError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    model = schema.Model.GetRootAs(buf, 0)
    if model.SubgraphsLength() == 0:
        raise FlatbufferError(f"{path}: model has no subgraph")
    codes = [_op_code(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
    buffers = [_buffer_bytes(model.Buffers(i)) for i in range(model.BuffersLength())]
    sg = model.Subgraphs(0)
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        name, custom, version = codes[op.OpcodeIndex()]
        ops.append(FbOp(name, custom, version, _indices(op.InputsAsNumpy()), _indices(op.OutputsAsNumpy())))
    tensors = [_tensor(sg.Tensors(i), buffers) for i in range(sg.TensorsLength())]
    return FbModel(ops, tensors, model.SubgraphsLength())


def _op_code(oc: Any) -> tuple[str, str | None, int]:
    # Codes above 127 live only in builtin_code; older files only fill deprecated_builtin_code.
    code = max(int(oc.DeprecatedBuiltinCode()), int(oc.BuiltinCode()))
    custom = oc.CustomCode().decode() if oc.CustomCode() else None
    name = BUILTIN_NAMES.get(code, f"BUILTIN_{code}")
    return (custom if name == "CUSTOM" and custom else name), custom, int(oc.Version())


def _buffer_bytes(b: Any) -> int:
    # Models over 2 GB keep data outside the flatbuffer: then only the size field is set.
    return int(b.DataLength()) or int(b.Size())


def _indices(a: Any) -> list[int]:
    return [int(x) for x in (a if not isinstance(a, int) else []) if int(x) >= 0]


def _tensor(t: Any, buffers: list[int]) -> FbTensor:
    bidx = int(t.Buffer())
    return FbTensor(
        shape=_ints(t.ShapeAsNumpy()),
        dtype=TENSOR_TYPES.get(int(t.Type()), "other"),
        buffer_bytes=buffers[bidx] if 0 < bidx < len(buffers) else 0,
        shape_signature=_ints(t.ShapeSignatureAsNumpy()),
    )


def _ints(a: Any) -> list[int]:
    # The generated *AsNumpy() return 0 (an int) for an absent vector.
    return [] if isinstance(a, int) else [int(x) for x in a]
