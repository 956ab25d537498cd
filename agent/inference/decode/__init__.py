"""Turn raw model outputs into detections, in pure numpy (shared by the agent and the builder).

- `yolo_nas`: the YOLO-NAS TPU body's six raw per-stride outputs (decoder names "yolo_nas_raw": class logits,
  "yolo_nas_sigmoid": class probabilities, the sigmoid inside the graph).
- `ssd`: Coral's SSD postprocess outputs: boxes, classes, scores, count (decoder name "ssd_postprocess").
- `nms`: class-aware non-maximum suppression.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.inference.decode.nms import batched_nms, nms
from agent.inference.decode.ssd import SsdDecoder
from agent.inference.decode.yolo_nas import DecodeError, Detections, YoloNasDecoder
from agent.inference.tensors import TensorInfo

if TYPE_CHECKING:
    from agent.protocol.manifest import OutputLayout

Decoder = YoloNasDecoder | SsdDecoder
# The manifest's `layout.decoder` names one of these.
DECODERS: dict[str, type[YoloNasDecoder] | type[SsdDecoder]] = {
    "yolo_nas_raw": YoloNasDecoder,
    "yolo_nas_sigmoid": YoloNasDecoder,  # from_layout reads the class head from the name
    "ssd_postprocess": SsdDecoder,
}


def make_decoder(layout: OutputLayout, outputs: Sequence[TensorInfo], input_size: tuple[int, int]) -> Decoder:
    """The decoder a bundle's layout names, bound to the actual output tensors (their quantization)."""
    kind = DECODERS.get(layout.decoder)
    if kind is None:
        raise DecodeError(f"unknown decoder {layout.decoder!r}")
    return kind.from_layout(outputs, layout, input_size)


__all__ = [
    "DECODERS",
    "DecodeError",
    "Decoder",
    "Detections",
    "SsdDecoder",
    "YoloNasDecoder",
    "batched_nms",
    "make_decoder",
    "nms",
]
