"""agent.inference.decode: the YOLO-NAS raw-head decoder and NMS.

The numpy tests run in the agent venv; the last test checks, with torch and libreyolo, that the decoder
reproduces libreyolo's own decode + postprocess on the same network outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.inference.decode import DecodeError, YoloNasDecoder, batched_nms, nms
from agent.inference.decode.nms import class_agnostic_nms

IMGSZ, NC, REG = 64, 2, 16
STRIDES = (8, 16, 32)


def _float_outputs() -> tuple[list[np.ndarray], np.ndarray]:
    """NHWC float outputs (reg8, cls8, reg16, cls16, reg32, cls32) with one object at stride 8."""
    outs: list[np.ndarray] = []
    for s in STRIDES:
        g = IMGSZ // s
        reg = np.full((1, g, g, 4, REG + 1), -8.0, np.float32)
        reg[..., 0] = 0.0  # distance 0 everywhere else
        cls = np.full((1, g, g, NC), -9.0, np.float32)
        outs += [reg.reshape(1, g, g, 4 * (REG + 1)), cls]
    reg8 = outs[0].reshape(1, 8, 8, 4, REG + 1)
    y, x = 2, 3
    reg8[0, y, x] = -8.0
    for side, d in enumerate((1.0, 2.0, 1.5, 0.5)):
        lo = int(np.floor(d))
        if d == lo:
            reg8[0, y, x, side, lo] = 8.0
        else:  # half the mass on each neighbouring bin: expectation d
            reg8[0, y, x, side, lo] = reg8[0, y, x, side, lo + 1] = 8.0
    outs[0] = reg8.reshape(1, 8, 8, 68)
    outs[1][0, y, x, 1] = 3.0
    expected = np.array([(3.5 - 1) * 8, (2.5 - 2) * 8, (3.5 + 1.5) * 8, (2.5 + 0.5) * 8], np.float32)
    return outs, expected


def _quantize(a: np.ndarray, dtype: type) -> tuple[np.ndarray, tuple[float, int]]:
    info = np.iinfo(dtype)
    lo, hi = float(min(a.min(), 0)), float(max(a.max(), 0))
    scale = (hi - lo) / (info.max - info.min)
    zp = int(round(info.min - lo / scale))
    return np.clip(np.round(a / scale + zp), info.min, info.max).astype(dtype), (scale, zp)


def test_decodes_a_known_box_from_float_outputs() -> None:
    outs, expected = _float_outputs()
    dec = YoloNasDecoder(NC, IMGSZ, [o.shape for o in outs])
    det = dec.decode(outs, conf=0.25)
    assert len(det) == 1
    assert det.classes[0] == 1
    assert det.scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)
    np.testing.assert_allclose(det.boxes[0], expected, atol=0.05)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_quantized_outputs_in_any_order_and_layout(dtype: type) -> None:
    outs, expected = _float_outputs()
    q = [_quantize(o, dtype) for o in outs]
    order = [3, 0, 5, 2, 4, 1]  # shuffled like PartitionedCall:0..5
    arrays = [q[i][0] for i in order]
    params = [q[i][1] for i in order]
    dec = YoloNasDecoder(NC, IMGSZ, [a.shape for a in arrays], params)
    det = dec.decode(arrays, conf=0.25)
    assert len(det) == 1 and det.classes[0] == 1
    np.testing.assert_allclose(det.boxes[0], expected, atol=0.5)
    # NCHW (PyTorch / ONNX layout) gives the same answer.
    nchw = [a.transpose(0, 3, 1, 2) for a in arrays]
    det2 = YoloNasDecoder(NC, IMGSZ, [a.shape for a in nchw], params).decode(nchw, conf=0.25)
    np.testing.assert_allclose(det2.boxes, det.boxes)


def test_quantized_prefilter_matches_the_float_threshold() -> None:
    rng = np.random.default_rng(0)
    outs = []
    for s in STRIDES:
        g = IMGSZ // s
        outs += [rng.normal(0, 2, (1, g, g, 68)).astype(np.float32), rng.normal(-2, 2, (1, g, g, NC)).astype(np.float32)]
    q = [_quantize(o, np.uint8) for o in outs]
    deq = [((a.astype(np.float32) - zp) * sc) for a, (sc, zp) in q]
    dq = YoloNasDecoder(NC, IMGSZ, [a.shape for a, _ in q], [p for _, p in q])
    df = YoloNasDecoder(NC, IMGSZ, [d.shape for d in deq])
    for conf in (0.001, 0.25, 0.6):
        bq, sq, cq = dq.candidates([a for a, _ in q], conf)
        bf, sf, cf = df.candidates(deq, conf)
        assert len(sq) == len(sf)
        np.testing.assert_allclose(sq, sf, rtol=1e-5)
        np.testing.assert_allclose(bq, bf, atol=1e-3)


def test_wrong_outputs_are_refused_clearly() -> None:
    outs, _ = _float_outputs()
    with pytest.raises(DecodeError, match="expected 6 outputs"):
        YoloNasDecoder(NC, IMGSZ, [o.shape for o in outs[:5]])
    with pytest.raises(DecodeError, match="stride"):
        YoloNasDecoder(NC + 1, IMGSZ, [o.shape for o in outs])


def test_nms_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]
    classes = np.array([0, 0, 1, 0])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]


def test_decoder_stays_class_aware_the_agent_dedupes_across_classes() -> None:
    """The same box from two anchors, class 1 (0.95) and class 0 (0.92): the decoder (and so the builder's
    evaluator) reports both; class_agnostic_nms (the agent's [detect] option) keeps the higher one."""
    outs, expected = _float_outputs()
    reg8 = outs[0].reshape(1, 8, 8, 4, REG + 1)
    reg8[0, 2, 4] = -8.0
    for side, (lo, hi) in enumerate(((2, 2), (2, 2), (0, 1), (0, 1))):  # l, t, r, b = 2, 2, 0.5, 0.5
        reg8[0, 2, 4, side, lo] = reg8[0, 2, 4, side, hi] = 8.0
    outs[0] = reg8.reshape(1, 8, 8, 68)
    outs[1][0, 2, 4, 0] = 2.5
    det = YoloNasDecoder(NC, IMGSZ, [o.shape for o in outs]).decode(outs, conf=0.25, iou=0.5)
    assert det.classes.tolist() == [1, 0]
    np.testing.assert_allclose(det.boxes, [expected, expected], atol=0.05)
    assert class_agnostic_nms(det.boxes, det.scores, 0.5).tolist() == [0]


def test_matches_libreyolo_decode_and_postprocess() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("libreyolo")
    from libreyolo.models.yolonas.nn import LibreYOLONASModel
    from libreyolo.postprocess.yolonas import postprocess

    from builder.export.onnx_body import body_outputs

    torch.manual_seed(0)
    model = LibreYOLONASModel(config="s", nb_classes=3).eval()
    for h in (model.heads.head1, model.heads.head2, model.heads.head3):
        torch.nn.init.constant_(h.cls_pred.bias, 0.5)  # an untrained head barely fires; make it
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        decoded, _ = model(x)
    ref = postprocess(decoded, conf_thres=0.3, iou_thres=0.6, input_size=160, original_size=(160, 160), max_det=300)
    outs = body_outputs(model, x.numpy())
    from agent.inference.preprocess import letterbox_params

    det = YoloNasDecoder(3, 160, [o.shape for o in outs]).decode(
        outs, conf=0.3, iou=0.6, max_det=300, letterbox=letterbox_params(160, 160, 160)
    )
    assert ref["num_detections"] > 5 and len(det) == ref["num_detections"]
    order_ref = np.argsort(-ref["scores"].numpy(), kind="stable")
    order = np.argsort(-det.scores, kind="stable")
    np.testing.assert_allclose(det.scores[order], ref["scores"].numpy()[order_ref], atol=1e-4)
    np.testing.assert_allclose(det.boxes[order], ref["boxes"].numpy()[order_ref], atol=2e-2)
    assert (det.classes[order] == ref["classes"].numpy()[order_ref]).all()


def test_make_decoder_binds_the_layout_to_the_backend_tensors() -> None:
    """What the engine does: the manifest's layout names the decoder, the tensors give shapes and quantization."""
    from agent.inference.decode import make_decoder
    from agent.inference.tensors import TensorInfo
    from agent.protocol.manifest import OutputLayout

    outs, expected = _float_outputs()
    q = [_quantize(o, np.uint8) for o in outs]
    tensors = [TensorInfo(i, f"PartitionedCall:{i}", a.shape, np.dtype(np.uint8), *p) for i, (a, p) in enumerate(q)]
    dec = make_decoder(OutputLayout(decoder="yolo_nas_raw", num_classes=NC), tensors, (IMGSZ, IMGSZ))
    assert isinstance(dec, YoloNasDecoder) and dec.quant == [p for _, p in q]
    det = dec.decode([a for a, _ in q], conf=0.25)
    assert len(det) == 1 and det.classes[0] == 1
    np.testing.assert_allclose(det.boxes[0], expected, atol=0.5)
