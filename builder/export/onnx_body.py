"""Export the fused YOLO-NAS *TPU body* to ONNX.

The body is everything the Edge TPU can run: backbone, neck and the three detection heads up to their
raw convolutions. It ends in six outputs, per stride s in (8, 16, 32): the DFL box logits
`reg{s}` [1, 4*(reg_max+1), H/s, W/s] and the class outputs `cls{s}` [1, num_classes, H/s, W/s].

Class head (`class_head`): "logits" ends at the class convolution (the host applies the sigmoid; in INT8 its
range is calibrated, so a calibration set without objects of a stride's size caps that stride's scores at
0.5); "sigmoid" adds the sigmoid, an elementwise LOGISTIC on the same 3 non-unit dims that maps to the Edge
TPU and whose INT8 output has the fixed [0, 1] scale 1/256, whatever the calibration set.
DFL softmax and box decode stay on the host (agent.inference.decode): the softmax runs over the 17 bins of
each side, which needs a reshape to 4 non-unit dims (H, W, 4, 17) or a 1-D SOFTMAX per side, and the
Edge TPU maps SOFTMAX only on 1-D input (builder/edgetpu/rules.py, `softmax-1d`); the op and everything after
it would fall to the CPU, and its 1/256 output steps would blur the box expectation.

This reaches into libreyolo's module tree (`backbone`, `neck`, `heads.head{1,2,3}`,
`prep_model_for_conversion(full_fusion=True)`); tests/test_export.py pins that contract.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.decode.yolo_nas import DECODER_NAMES

STRIDES = (8, 16, 32)


class ExportError(Exception):
    """The model cannot be exported (unknown architecture, broken fusion, ...)."""


def output_names(strides: tuple[int, ...] = STRIDES) -> list[str]:
    names: list[str] = []
    for s in strides:
        names += [f"reg{s}", f"cls{s}"]
    return names


def make_body(model: Any, class_head: str = "logits") -> Any:
    """A fully fused copy of a libreyolo YOLO-NAS detect model returning the six head outputs (class logits,
    or class probabilities with `class_head="sigmoid"`)."""
    import torch
    from torch import nn

    if class_head not in DECODER_NAMES:
        raise ExportError(f"class_head must be one of {sorted(DECODER_NAMES)}, not {class_head!r}")
    sigmoid = class_head == "sigmoid"

    for attr in ("backbone", "neck", "heads"):
        if not hasattr(model, attr):
            raise ExportError(f"not a libreyolo YOLO-NAS detect model: no `{attr}` submodule")
    heads = model.heads
    if tuple(getattr(heads, "fpn_strides", ())) != STRIDES:
        raise ExportError(f"unexpected head strides {getattr(heads, 'fpn_strides', None)}")

    fused = copy.deepcopy(model).eval().float()
    # QARepVGG: fold the 3x3/1x1/identity branches and the post-BN into one conv ("full fusion").
    fused.prep_model_for_conversion(full_fusion=True)
    for m in fused.modules():
        if hasattr(m, "fully_fused") and not m.fully_fused:
            raise ExportError(f"{type(m).__name__} did not fully fuse")

    class Body(nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.backbone = net.backbone
            self.neck = net.neck
            self.head1 = net.heads.head1
            self.head2 = net.heads.head2
            self.head3 = net.heads.head3

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feats = self.neck(self.backbone(x))
            out: list[torch.Tensor] = []
            for head, feat in zip((self.head1, self.head2, self.head3), feats[:3], strict=True):
                reg, cls = head(feat)
                out += [reg, torch.sigmoid(cls) if sigmoid else cls]
            return tuple(out)

    return Body(fused).eval()


def num_classes_of(model: Any) -> int:
    return int(model.heads.num_classes)


def reg_max_of(model: Any) -> int:
    return int(model.heads.reg_max)


def export_onnx(model: Any, imgsz: int, out: Path, opset: int = 17, class_head: str = "logits") -> Path:
    """Write the fused body as ONNX (static batch 1, NCHW float input in [0, 1])."""
    import torch

    body = make_body(model, class_head)
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter folds BatchNorm into the convs (eval mode) and needs no onnxscript.
        torch.onnx.export(
            body,
            (dummy,),
            str(out),
            input_names=["images"],
            output_names=output_names(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    _check_onnx(out, class_head)
    return out


def _check_onnx(path: Path, class_head: str = "logits") -> None:
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    bad = set(ops) & {"BatchNormalization", "Softmax", "Reshape", "Transpose"}
    sigmoids = ops.count("Sigmoid")
    expected = len(STRIDES) if class_head == "sigmoid" else 0  # one per class output, nothing else
    if bad or sigmoids != expected:
        found = sorted(bad) + ([f"{sigmoids} Sigmoid (expected {expected})"] if sigmoids != expected else [])
        raise ExportError(f"exported body contains {found}; fusion or head cut failed")


def body_outputs(model: Any, batch: np.ndarray, class_head: str = "logits") -> list[np.ndarray]:
    """Run the fused body in PyTorch on an NCHW float batch; returns the six outputs as NCHW numpy."""
    import torch

    body = make_body(model, class_head)
    with torch.no_grad():
        outs = body(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    return [o.numpy() for o in outs]


def op_histogram(path: Path) -> dict[str, int]:
    import onnx

    hist: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: -kv[1]))
