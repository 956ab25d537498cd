"""Decode the YOLO-NAS TPU body's six raw outputs into boxes, in pure numpy.

Per stride s in (8, 16, 32) the body emits DFL box logits (4 × (reg_max+1) channels) and class
logits (num_classes channels) on an (H/s, W/s) grid. This module reproduces libreyolo's NDFLHeads
decode and `postprocess` exactly: softmax over the reg_max+1 bins, expectation × stride around the
anchor point (cell centre), sigmoid class scores, best class per anchor, `score > conf`, top-k
(1000) before NMS, map back to the frame and clip, drop empty boxes, class-aware NMS, max_det.

Outputs are matched by shape (grid size and channel count), never by position: the INT8 file's
outputs come back as `PartitionedCall:0..5` in shuffled order. Layout may be NHWC (TFLite) or
NCHW (PyTorch/ONNX). Quantization parameters come from each tensor; the score threshold is applied
in the quantized domain first, so only candidate anchors are dequantized.

Two class heads (manifest `layout.decoder`): "yolo_nas_raw" emits class logits (the host applies the
sigmoid); "yolo_nas_sigmoid" has the sigmoid inside the graph, so the class outputs are probabilities
(in INT8: LOGISTIC's fixed scale 1/256, which no calibration set can push off [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from agent.inference.decode.base import DecodeError, Decoder, Detections, Quant, dequantize
from agent.inference.decode.nms import batched_nms
from agent.inference.preprocess import LetterboxInfo, unletterbox_boxes
from agent.inference.tensors import TensorInfo

if TYPE_CHECKING:
    from agent.protocol.manifest import OutputLayout

ClassHead = Literal["logits", "sigmoid"]
# The manifest's layout.decoder name of each class head (and back).
DECODER_NAMES: dict[ClassHead, Literal["yolo_nas_raw", "yolo_nas_sigmoid"]] = {"logits": "yolo_nas_raw", "sigmoid": "yolo_nas_sigmoid"}
CLASS_HEADS: dict[str, ClassHead] = {"yolo_nas_raw": "logits", "yolo_nas_sigmoid": "sigmoid"}


@dataclass(frozen=True)
class _Level:
    stride: int
    gh: int
    gw: int
    reg_index: int
    cls_index: int
    reg_nhwc: bool
    cls_nhwc: bool


def _layout(shape: Sequence[int], gh: int, gw: int) -> tuple[bool, int] | None:
    """(is_nhwc, channels) if `shape` is a (1,)H,W,C or (1,)C,H,W map on a gh×gw grid."""
    dims = [int(d) for d in shape]
    if len(dims) == 4:
        if dims[0] != 1:
            return None
        dims = dims[1:]
    if len(dims) != 3:
        return None
    if dims[0] == gh and dims[1] == gw:
        return True, dims[2]
    if dims[1] == gh and dims[2] == gw:
        return False, dims[0]
    return None


def logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class YoloNasDecoder(Decoder):
    """Stateless per frame; binds the output order once from the output shapes."""

    def __init__(
        self,
        num_classes: int,
        input_size: int | tuple[int, int],
        output_shapes: Sequence[Sequence[int]],
        quant: Sequence[Quant] | None = None,
        strides: Sequence[int] = (8, 16, 32),
        reg_max: int = 16,
        class_head: ClassHead = "logits",
    ) -> None:
        super().__init__(num_classes, input_size, len(output_shapes), quant)
        if class_head not in DECODER_NAMES:
            raise DecodeError(f"class_head must be one of {sorted(DECODER_NAMES)}, not {class_head!r}")
        self.class_head: ClassHead = class_head
        self.strides = tuple(int(s) for s in strides)
        self.reg_max = int(reg_max)
        self.reg_channels = 4 * (self.reg_max + 1)
        if self.num_classes == self.reg_channels:
            raise DecodeError(f"{self.num_classes} classes is ambiguous with {self.reg_channels} DFL channels")
        if len(self.quant) != len(output_shapes):
            raise DecodeError("one quantization entry per output is needed")
        self.levels = self._match([tuple(int(d) for d in s) for s in output_shapes])
        self._proj = np.arange(self.reg_max + 1, dtype=np.float32)
        self._anchors = {lv.stride: self._anchor_points(lv) for lv in self.levels}

    @classmethod
    def from_tensors(
        cls, tensors: Sequence[TensorInfo], num_classes: int, input_size: int | tuple[int, int], **kw: Any
    ) -> YoloNasDecoder:
        """Bound to a backend's output tensors (quantization read from each tensor)."""
        return cls(num_classes, input_size, [t.shape for t in tensors], [t.quant for t in tensors], **kw)

    @classmethod
    def from_layout(
        cls, tensors: Sequence[TensorInfo], layout: OutputLayout, input_size: tuple[int, int]
    ) -> YoloNasDecoder:
        """As a bundle's manifest describes it (agent.inference.decode.make_decoder)."""
        if layout.decoder not in CLASS_HEADS:
            raise DecodeError(f"decoder {layout.decoder!r} is not a YOLO-NAS decoder ({sorted(CLASS_HEADS)})")
        return cls.from_tensors(tensors, layout.num_classes, input_size, strides=layout.strides,
                                reg_max=layout.reg_max, class_head=CLASS_HEADS[layout.decoder])

    def _match(self, shapes: list[tuple[int, ...]]) -> list[_Level]:
        if len(shapes) != 2 * len(self.strides):
            raise DecodeError(f"expected {2 * len(self.strides)} outputs (box + class per stride), got {len(shapes)}")
        levels: list[_Level] = []
        used: set[int] = set()
        for s in self.strides:
            gh, gw = self.input_h // s, self.input_w // s
            reg = cls = None
            for i, shp in enumerate(shapes):
                if i in used:
                    continue
                lay = _layout(shp, gh, gw)
                if lay is None:
                    continue
                if lay[1] == self.reg_channels and reg is None:
                    reg = (i, lay[0])
                elif lay[1] == self.num_classes and cls is None:
                    cls = (i, lay[0])
            if reg is None or cls is None:
                raise DecodeError(
                    f"no {'box' if reg is None else 'class'} output for stride {s} ({gh}x{gw} grid, "
                    f"{self.reg_channels if reg is None else self.num_classes} channels) among shapes {shapes}"
                )
            used.update((reg[0], cls[0]))
            levels.append(_Level(s, gh, gw, reg[0], cls[0], reg[1], cls[1]))
        return levels

    @staticmethod
    def _anchor_points(lv: _Level) -> np.ndarray:
        ys, xs = np.meshgrid(np.arange(lv.gh, dtype=np.float32), np.arange(lv.gw, dtype=np.float32), indexing="ij")
        return np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)

    def _flat(self, a: np.ndarray, nhwc: bool, channels: int) -> np.ndarray:
        """Any accepted layout → (H*W, C) view/copy in row-major anchor order."""
        a = a.reshape(a.shape[-3:]) if a.ndim == 4 else a
        if nhwc:
            return a.reshape(-1, channels)
        return a.reshape(channels, -1).T

    def candidates(
        self, outputs: Sequence[np.ndarray], conf: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every anchor whose best class score > conf: boxes (canvas px), scores, classes."""
        if len(outputs) != len(self.quant):
            raise DecodeError(f"expected {len(self.quant)} outputs, got {len(outputs)}")
        # The threshold in the class outputs' own domain: a logit, or the probability itself.
        probs = self.class_head == "sigmoid"
        thr = float(conf) if probs else logit(conf)
        all_boxes, all_scores, all_cls = [], [], []
        for lv in self.levels:
            cls_raw = self._flat(np.asarray(outputs[lv.cls_index]), lv.cls_nhwc, self.num_classes)
            q = self.quant[lv.cls_index]
            best_raw = cls_raw.max(axis=1)
            # Prefilter in the stored domain, v = s*(q-zp) being a logit or a probability:
            # sigmoid(v) > conf <=> q > zp + logit(conf)/s;  v > conf <=> q > zp + conf/s.
            if q is not None and cls_raw.dtype.kind in "ui":
                keep = np.nonzero(best_raw.astype(np.float32) > np.float32(q[1] + thr / q[0]))[0]
            else:
                keep = np.nonzero(best_raw.astype(np.float32) > np.float32(thr))[0]
            if keep.size == 0:
                continue
            values = dequantize(cls_raw[keep], q)
            cls_id = values.argmax(axis=1)
            best = values[np.arange(keep.size), cls_id]
            score = best if probs else 1.0 / (1.0 + np.exp(-best))
            score_ok = score > conf  # exact test on the float score (as libreyolo)
            keep, cls_id, score = keep[score_ok], cls_id[score_ok], score[score_ok]
            if keep.size == 0:
                continue
            reg_raw = self._flat(np.asarray(outputs[lv.reg_index]), lv.reg_nhwc, self.reg_channels)[keep]
            reg = dequantize(reg_raw, self.quant[lv.reg_index]).reshape(-1, 4, self.reg_max + 1)
            dist = _softmax(reg, axis=2) @ self._proj  # (k, 4): left, top, right, bottom in grid cells
            ap = self._anchors[lv.stride][keep]
            boxes = np.concatenate([ap - dist[:, :2], ap + dist[:, 2:]], axis=1) * np.float32(lv.stride)
            all_boxes.append(boxes.astype(np.float32))
            all_scores.append(score.astype(np.float32))
            all_cls.append(cls_id.astype(np.int64))
        if not all_boxes:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_cls)

    def decode(
        self,
        outputs: Sequence[np.ndarray],
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        pre_nms_top_k: int = 1000,
        letterbox: LetterboxInfo | None = None,
        classes: Sequence[int] | None = None,
    ) -> Detections:
        boxes, scores, cls = self.candidates(outputs, conf)
        if classes is not None and len(scores):
            m = np.isin(cls, np.asarray(list(classes)))
            boxes, scores, cls = boxes[m], scores[m], cls[m]
        if len(scores) == 0:
            return Detections()
        if pre_nms_top_k and len(scores) > pre_nms_top_k:
            top = np.argsort(-scores, kind="stable")[:pre_nms_top_k]
            boxes, scores, cls = boxes[top], scores[top], cls[top]
        if letterbox is not None:
            boxes = unletterbox_boxes(boxes, letterbox, clip=True)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, cls = boxes[ok], scores[ok], cls[ok]
            if len(scores) == 0:
                return Detections()
        keep = batched_nms(boxes, scores, cls, iou)[:max_det]
        return Detections(boxes[keep], scores[keep], cls[keep])


__all__ = ["CLASS_HEADS", "DECODER_NAMES", "ClassHead", "DecodeError", "Detections", "Quant", "YoloNasDecoder",
           "dequantize", "logit"]
