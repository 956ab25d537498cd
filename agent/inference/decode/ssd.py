"""Decode the standard Coral SSD postprocess outputs (decoder name "ssd_postprocess"), in pure numpy.

Google's detection models for the Edge TPU (e.g. ssd_mobilenet_v2_coco_quant_postprocess) end in the
`TFLite_Detection_PostProcess` custom op, which emits four tensors:

    TFLite_Detection_PostProcess     boxes    (1, N, 4)  [ymin, xmin, ymax, xmax], 0..1 of the input tensor
    TFLite_Detection_PostProcess:1   classes  (1, N)     class ids as floats
    TFLite_Detection_PostProcess:2   scores   (1, N)     0..1, sorted descending
    TFLite_Detection_PostProcess:3   count    (1,)       valid rows

The op has already done NMS. Output order differs between exporters (TF1 vs TF2), so tensors are
matched by those names first, else by shape (boxes end in 4, count has one element) and, for the two
(1, N) tensors, by content. The outputs are float32 in every Coral model, but a quantized variant is
dequantized with each tensor's own scale and zero point, never assumed ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.inference.decode.base import DecodeError, Decoder, Detections, Quant, dequantize
from agent.inference.preprocess import LetterboxInfo, unletterbox_boxes
from agent.inference.tensors import TensorInfo

if TYPE_CHECKING:
    from agent.protocol.manifest import OutputLayout

_ROLES = ("boxes", "classes", "scores", "count")


class SsdDecoder(Decoder):
    """Binds output roles once (from names/shapes); decode() per frame."""

    def __init__(
        self,
        num_classes: int,
        input_size: int | tuple[int, int],
        output_shapes: Sequence[Sequence[int]],
        quant: Sequence[Quant] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        shapes = [tuple(int(d) for d in s) for s in output_shapes]
        if len(shapes) != 4:
            raise DecodeError(f"an SSD postprocess model has 4 outputs (boxes, classes, scores, count), not {len(shapes)}")
        super().__init__(num_classes, input_size, 4, quant)
        self.index: dict[str, int] = self._by_name(names) if names else {}
        # Named outputs say which is which; otherwise the classes/scores pair is settled by content.
        self._pair_resolved = bool(self.index)
        if not self.index:
            self.index = self._by_shape(shapes)

    @staticmethod
    def _by_name(names: Sequence[str]) -> dict[str, int]:
        idx: dict[str, int] = {}
        for i, n in enumerate(names):
            base, _, suffix = n.rpartition(":")
            if "TFLite_Detection_PostProcess" not in n:
                return {}
            if not base:  # plain "TFLite_Detection_PostProcess" is the boxes
                idx["boxes"] = i
            elif suffix.isdigit() and 0 < int(suffix) < 4:
                idx[_ROLES[int(suffix)]] = i
        return idx if len(idx) == 4 else {}

    def _by_shape(self, shapes: list[tuple[int, ...]]) -> dict[str, int]:
        idx: dict[str, int] = {}
        pair: list[int] = []
        for i, s in enumerate(shapes):
            size = int(np.prod(s)) if s else 1
            if len(s) >= 2 and s[-1] == 4 and size > 4 and "boxes" not in idx:
                idx["boxes"] = i
            elif size == 1 and "count" not in idx:
                idx["count"] = i
            else:
                pair.append(i)
        if len(idx) != 2 or len(pair) != 2:
            raise DecodeError(f"outputs {shapes} do not look like SSD postprocess (boxes, classes, scores, count)")
        n = shapes[idx["boxes"]][-2]
        for i in pair:
            if int(np.prod(shapes[i])) != n:
                raise DecodeError(f"SSD output {i} has shape {shapes[i]}, expected {n} rows like the boxes")
        # TF1 order (classes then scores) until content says otherwise (see _resolve_pair).
        idx["classes"], idx["scores"] = pair
        return idx

    @classmethod
    def from_tensors(
        cls, tensors: Sequence[TensorInfo], num_classes: int, input_size: int | tuple[int, int], **kw: Any
    ) -> SsdDecoder:
        """Bound to a backend's output tensors (quantization and names read from each tensor)."""
        return cls(num_classes, input_size, [t.shape for t in tensors], [t.quant for t in tensors],
                   names=[t.name for t in tensors])

    @classmethod
    def from_layout(cls, tensors: Sequence[TensorInfo], layout: OutputLayout, input_size: tuple[int, int]) -> SsdDecoder:
        """As a bundle's manifest describes it (agent.inference.decode.make_decoder)."""
        return cls.from_tensors(tensors, layout.num_classes, input_size)

    def _resolve_pair(self, classes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Without names: scores are in [0, 1] and sorted descending; class ids are whole numbers."""
        if self._pair_resolved:
            return classes, scores
        whole_c = bool(np.all(classes == np.round(classes)))
        whole_s = bool(np.all(scores == np.round(scores)))
        if whole_s and not whole_c or (scores.max(initial=0) > 1.0 >= classes.max(initial=0)):
            self.index["classes"], self.index["scores"] = self.index["scores"], self.index["classes"]
            classes, scores = scores, classes
            self._pair_resolved = True
        elif whole_c and not whole_s:
            self._pair_resolved = True
        return classes, scores

    def decode(
        self,
        outputs: Sequence[np.ndarray],
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        letterbox: LetterboxInfo | None = None,
        classes: Sequence[int] | None = None,
        pre_nms_top_k: int = 0,
    ) -> Detections:
        """Boxes xyxy in frame pixels (with `letterbox`) or input-tensor pixels. `iou` is unused: the
        postprocess op has already suppressed overlaps."""
        if len(outputs) != 4:
            raise DecodeError(f"expected 4 outputs, got {len(outputs)}")
        get = {r: dequantize(np.asarray(outputs[i]), self.quant[i]) for r, i in self.index.items()}
        boxes: np.ndarray = get["boxes"].reshape(-1, 4)
        cls_, scores = self._resolve_pair(get["classes"].reshape(-1), get["scores"].reshape(-1))
        count = int(np.clip(round(float(get["count"].reshape(-1)[0])), 0, len(boxes)))
        boxes, cls_, scores = boxes[:count], cls_[:count], scores[:count]
        if not np.all(np.isfinite(scores)) or not np.all(np.isfinite(boxes)):
            raise DecodeError("non-finite values in SSD outputs")
        keep = scores > conf
        cls_ids = np.round(cls_).astype(np.int64)
        keep &= (cls_ids >= 0) & (cls_ids < self.num_classes)
        if classes is not None:
            keep &= np.isin(cls_ids, np.asarray(list(classes), dtype=np.int64))
        boxes, scores, cls_ids = boxes[keep], scores[keep], cls_ids[keep]
        # [ymin, xmin, ymax, xmax] in 0..1 of the input tensor -> xyxy input pixels.
        xyxy: np.ndarray = np.stack(
            [boxes[:, 1] * self.input_w, boxes[:, 0] * self.input_h, boxes[:, 3] * self.input_w, boxes[:, 2] * self.input_h],
            axis=1,
        ).astype(np.float32)
        if letterbox is not None:
            xyxy = unletterbox_boxes(xyxy, letterbox, clip=True)
        ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        xyxy, scores, cls_ids = xyxy[ok], scores[ok], cls_ids[ok]
        order = np.argsort(-scores, kind="stable")[:max_det]
        return Detections(xyxy[order], scores[order].astype(np.float32), cls_ids[order])


__all__ = ["SsdDecoder"]
