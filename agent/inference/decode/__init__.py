"""Turn raw model outputs into detections, in pure numpy (shared by the agent and the builder).

- `yolo_nas`: the YOLO-NAS TPU body's six raw per-stride outputs (decoder name "yolo_nas_raw").
- `ssd`: Coral's SSD postprocess outputs: boxes, classes, scores, count (decoder name "ssd_postprocess").
- `nms`: class-aware non-maximum suppression.
"""

from agent.inference.decode.nms import batched_nms, nms
from agent.inference.decode.ssd import SsdDecoder
from agent.inference.decode.yolo_nas import DecodeError, Detections, YoloNasDecoder

DECODERS = {"yolo_nas_raw": YoloNasDecoder, "ssd_postprocess": SsdDecoder}

__all__ = ["DECODERS", "DecodeError", "Detections", "SsdDecoder", "YoloNasDecoder", "batched_nms", "nms"]
