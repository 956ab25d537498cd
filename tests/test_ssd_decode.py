"""SSD postprocess decoding (Coral's TFLite_Detection_PostProcess outputs) in the real tensor format:
boxes (1, N, 4) [ymin, xmin, ymax, xmax] in 0..1 of the input, classes (1, N), scores (1, N), count (1,)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.inference.decode.ssd import SsdDecoder
from agent.inference.decode.yolo_nas import DecodeError
from agent.inference.preprocess import letterbox_params

NAMES = ["TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess:1",
         "TFLite_Detection_PostProcess:2", "TFLite_Detection_PostProcess:3"]
SHAPES = [(1, 10, 4), (1, 10), (1, 10), (1,)]


def _outputs() -> list[np.ndarray]:
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]  # ymin xmin ymax xmax
    boxes[0, 1] = [0.5, 0.5, 0.9, 0.7]
    boxes[0, 2] = [0.0, 0.0, 0.2, 0.2]
    boxes[0, 3] = [0.3, 0.3, 0.4, 0.4]  # beyond count
    classes = np.array([[2, 0, 1, 2, 0, 0, 0, 0, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.6, 0.3, 0.95, 0, 0, 0, 0, 0, 0]], np.float32)
    count = np.array([3], np.float32)
    return [boxes, classes, scores, count]


def test_named_outputs_in_tf2_order() -> None:
    outs = _outputs()
    order = [2, 0, 3, 1]  # TF2 exporters emit scores, boxes, count, classes
    dec = SsdDecoder(3, 300, [SHAPES[i] for i in order], names=[NAMES[i] for i in order])
    det = dec.decode([outs[i] for i in order], conf=0.5)
    assert len(det) == 2  # third is below threshold, fourth beyond count
    np.testing.assert_allclose(det.boxes[0], [60, 30, 180, 150], atol=1e-4)  # xyxy pixels of a 300 input
    assert det.classes.tolist() == [2, 0]
    np.testing.assert_allclose(det.scores, [0.9, 0.6])


def test_unnamed_outputs_resolved_by_shape_and_content() -> None:
    outs = _outputs()
    order = [0, 2, 1, 3]  # scores before classes and no names: content decides
    dec = SsdDecoder(3, 300, [SHAPES[i] for i in order])
    det = dec.decode([outs[i] for i in order], conf=0.5)
    assert det.classes.tolist() == [2, 0]
    np.testing.assert_allclose(det.scores, [0.9, 0.6])


def test_quantized_outputs_use_each_tensors_parameters() -> None:
    b, c, s, n = _outputs()
    qb = np.round(b / 0.004 + 10).astype(np.uint8)
    qs = np.round(s / (1 / 255.0) - 128).astype(np.int8)
    quant = [(0.004, 10), None, (1 / 255.0, -128), None]
    dec = SsdDecoder(3, 300, SHAPES, quant=quant, names=NAMES)
    det = dec.decode([qb, c, qs, n], conf=0.5)
    np.testing.assert_allclose(det.boxes[0], [60, 30, 180, 150], atol=1.5)
    np.testing.assert_allclose(det.scores, [0.9, 0.6], atol=0.01)


def test_letterbox_mapping_and_class_filter() -> None:
    info = letterbox_params(640, 480, 300)  # ratio 300/640, 37 px bars top and bottom
    dec = SsdDecoder(3, 300, SHAPES, names=NAMES)
    det = dec.decode(_outputs(), conf=0.5, letterbox=info, classes=[0])
    assert det.classes.tolist() == [0]
    x1 = 0.5 * 300 / info.ratio
    y1 = (0.5 * 300 - info.pad_y) / info.ratio
    np.testing.assert_allclose(det.boxes[0, :2], [x1, y1], atol=1e-3)


def test_bad_outputs_are_refused() -> None:
    with pytest.raises(DecodeError, match="4 outputs"):
        SsdDecoder(3, 300, [(1, 1001)])
    with pytest.raises(DecodeError, match="do not look like SSD"):
        SsdDecoder(3, 300, [(1, 10, 4), (1, 10, 4), (1, 10), (1, 10)])
    dec = SsdDecoder(3, 300, SHAPES, names=NAMES)
    outs = _outputs()
    outs[2][0, 0] = np.nan
    with pytest.raises(DecodeError, match="non-finite"):
        dec.decode(outs, conf=0.5)


def test_out_of_range_class_ids_are_dropped() -> None:
    outs = _outputs()
    outs[1][0, 0] = 90  # a COCO id on a 3-class model
    det = SsdDecoder(3, 300, SHAPES, names=NAMES).decode(outs, conf=0.5)
    assert det.classes.tolist() == [0]


def test_from_tensors_reads_names_and_quantization() -> None:
    from agent.inference.decode import make_decoder
    from agent.inference.tensors import TensorInfo
    from agent.protocol.manifest import OutputLayout

    order = [2, 0, 3, 1]
    tensors = [TensorInfo(i, NAMES[k], SHAPES[k], np.dtype(np.float32)) for i, k in enumerate(order)]
    dec = make_decoder(OutputLayout(decoder="ssd_postprocess", num_classes=3), tensors, (300, 300))
    assert isinstance(dec, SsdDecoder) and dec.quant == [None] * 4
    outs = _outputs()
    det = dec.decode([outs[k] for k in order], conf=0.5)
    assert det.classes.tolist() == [2, 0]
