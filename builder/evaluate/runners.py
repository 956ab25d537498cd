"""Models as "one RGB canvas in, raw outputs out": the fused PyTorch body and any .tflite file.

Conversion checks and evaluation treat both alike through the `Runner` protocol; only the model step
differs, so the numbers compare the models and nothing else. TFLite files load through the agent's
runtime shim (agent.inference.tflite), the same loader the agent uses on the device.
`class_head` ("logits" or "sigmoid", builder.export.onnx_body) says what the class outputs hold; each runner's
`decoder()` decodes accordingly, as the node does from the manifest's `layout.decoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.inference import tflite
from agent.inference.decode import YoloNasDecoder
from agent.inference.decode.yolo_nas import CLASS_HEADS, ClassHead
from agent.inference.preprocess import to_input
from agent.inference.tensors import TensorInfo
from agent.protocol.manifest import MANIFEST_NAME, Manifest, TensorSpec
from builder.export.onnx_body import make_body


class EvaluateError(ValueError):
    """A model or dataset cannot be evaluated; the message says why."""


class Runner(Protocol):
    """A model that maps one RGB canvas to its raw outputs."""

    name: str
    imgsz: int

    def __call__(self, canvas: np.ndarray) -> list[np.ndarray]: ...

    def decoder(self, num_classes: int) -> YoloNasDecoder: ...


def tensor_spec(t: TensorInfo) -> TensorSpec:
    """The manifest's description of one model tensor (name, shape, dtype, quantization)."""
    q = t.quant
    return TensorSpec(
        name=t.name,
        shape=list(t.shape),
        dtype=t.dtype.name,  # type: ignore[arg-type]
        scale=q[0] if q else None,
        zero_point=q[1] if q else None,
    )


def bundle_class_head(model_path: Path) -> ClassHead:
    """The class head a bundle's manifest names for a model file in it ("logits" for a file outside a bundle)."""
    manifest = model_path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return "logits"
    try:
        decoder = Manifest.model_validate_json(manifest.read_bytes()).layout.decoder
    except ValueError as exc:
        raise EvaluateError(f"{manifest}: unreadable manifest, cannot tell the class head: {exc}") from exc
    return CLASS_HEADS.get(decoder, "logits")


class TorchRunner:
    """The fused PyTorch body (FP32), NCHW input 0..1; the reference every TFLite file is measured against."""

    def __init__(self, model: Any, imgsz: int, threads: int | None = None, name: str = "pytorch_fp32",
                 class_head: ClassHead = "logits") -> None:
        # torch loads lazily: evaluating a .tflite file must not pay for it.
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.body = make_body(model, class_head)
        self.imgsz = imgsz
        self.name = name
        self.class_head: ClassHead = class_head
        self._shapes: list[tuple[int, ...]] | None = None

    def __call__(self, canvas: np.ndarray) -> list[np.ndarray]:
        import torch

        x = torch.from_numpy(to_input(canvas, np.float32, layout="NCHW"))
        with torch.no_grad():
            outs = [o.numpy() for o in self.body(x)]
        self._shapes = [o.shape for o in outs]
        return outs

    def decoder(self, num_classes: int) -> YoloNasDecoder:
        if self._shapes is None:
            self(np.full((self.imgsz, self.imgsz, 3), 114, np.uint8))
        assert self._shapes is not None
        return YoloNasDecoder(num_classes, self.imgsz, self._shapes, class_head=self.class_head)


class TFLiteRunner:
    """One .tflite file with a (1, S, S, 3) input; `input` / `outputs` describe its tensors (agent.inference.tensors)."""

    def __init__(self, path: Path | str, threads: int | None = None, name: str | None = None,
                 class_head: ClassHead | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.class_head: ClassHead = class_head or bundle_class_head(self.path)
        try:
            self.interpreter = tflite.load_interpreter(self.path, threads)
        except (ValueError, RuntimeError) as exc:
            raise EvaluateError(f"{path}: cannot load TFLite model: {exc}") from exc
        self.input: TensorInfo = tflite.input_tensors(self.interpreter)[0]
        self.outputs: list[TensorInfo] = tflite.output_tensors(self.interpreter)
        shape = self.input.shape
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
            raise EvaluateError(f"{path}: expected a (1, S, S, 3) input, got {list(shape)}")
        self.imgsz = shape[1]

    def to_input(self, canvas: np.ndarray) -> np.ndarray:
        """The exact input tensor this model gets for a canvas (through its input quantization)."""
        scale, zero_point = self.input.quant or (None, None)
        return to_input(canvas, self.input.dtype, scale, zero_point)

    def __call__(self, canvas: np.ndarray) -> list[np.ndarray]:
        # Not tflite.run(): that re-reads the tensor details per call, which latency measurements would include.
        self.interpreter.set_tensor(self.input.index, self.to_input(canvas))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(t.index).copy() for t in self.outputs]

    def input_spec(self) -> TensorSpec:
        return tensor_spec(self.input)

    def output_specs(self) -> list[TensorSpec]:
        return [tensor_spec(t) for t in self.outputs]

    def decoder(self, num_classes: int) -> YoloNasDecoder:
        return YoloNasDecoder.from_tensors(self.outputs, num_classes, self.imgsz, class_head=self.class_head)
