"""[detect] class_agnostic_nms: one object is reported once even when the model splits it across classes.

Pure-function tests of agent.inference.decode.nms.class_agnostic_nms, then the agent's Engine on the real
trained test bundle and the val images of the dataset it learned from: on (the default), no two
detections of a frame overlap at IoU >= the NMS threshold whatever their classes; off, the output is the
decoder's class-aware result, exactly as before the option existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from helpers import iou

from agent.config import AgentConfig, DetectConfig, load_config
from agent.inference.decode import batched_nms
from agent.inference.decode.nms import class_agnostic_nms
from agent.inference.engine import Engine, make_decoder
from agent.inference.preprocess import letterbox, normalize_boxes, to_input
from agent.protocol.messages import Detection
from agent.security.bundle import Bundle
from agent.security.signing import Keyring

# A circle and a square on the same spot (IoU 0.81), plus a separate box.
BOXES = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 140, 140]], np.float32)
CLASSES = np.array([0, 1, 2])


def test_overlapping_boxes_of_different_classes_one_kept_when_agnostic() -> None:
    scores = np.array([0.52, 0.55, 0.9], np.float32)
    assert class_agnostic_nms(BOXES, scores, 0.5).tolist() == [2, 1]  # the pair's highest score survives
    assert batched_nms(BOXES, scores, CLASSES, 0.5).tolist() == [2, 1, 0]  # class-aware keeps both
    assert batched_nms(BOXES, scores, np.array([1, 1, 1]), 0.5).tolist() == [2, 1]  # one class: the same


def test_non_overlapping_boxes_all_kept() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], [6, 6, 16, 16]], np.float32)
    scores = np.array([0.3, 0.9, 0.5, 0.7], np.float32)
    assert class_agnostic_nms(boxes, scores, 0.5).tolist() == [1, 3, 2, 0]  # IoU(0, 3) = 16/184


def test_threshold_is_strict_and_ties_keep_the_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 5, 10, 15]], np.float32)  # IoU(0, 2) = 1/3
    scores = np.array([0.5, 0.5, 0.4], np.float32)
    assert class_agnostic_nms(boxes, scores, 1 / 3 + 1e-6).tolist() == [0, 2]
    assert class_agnostic_nms(boxes, scores, 0.3).tolist() == [0]
    assert class_agnostic_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []


def test_config_default_on_and_old_configs_load(tmp_path: Path) -> None:
    assert DetectConfig().class_agnostic_nms is True
    old = tmp_path / "old.toml"
    old.write_text("[detect]\nscore_threshold = 0.35\niou_threshold = 0.45\n")
    cfg = load_config(old)
    assert cfg.detect.class_agnostic_nms is True and cfg.detect.iou_threshold == 0.45
    off = tmp_path / "off.toml"
    off.write_text("[detect]\nclass_agnostic_nms = false\n")
    assert load_config(off).detect.class_agnostic_nms is False


# ------------------------------------------------------------------------------- the real trained bundle

SCORE = 0.3  # as the other end-to-end tests: the demo model splits objects across classes at this level
IOU = 0.5


@pytest.fixture(scope="module")
def val_frames(synth_dataset: Path) -> list[np.ndarray]:
    frames = [cv2.imread(str(p)) for p in sorted((synth_dataset / "images" / "val").glob("*.jpg"))]
    assert frames and all(f is not None for f in frames)
    return frames


@pytest.fixture(scope="module")
def bundle(trained_bundle: Path, trained_bundle_keys: Path) -> Bundle:
    return Bundle.load(trained_bundle, Keyring.load(trained_bundle_keys))


def _engine(bundle: Bundle, tmp_path: Path, **detect: Any) -> Engine:
    return Engine.load(bundle, AgentConfig(
        state_dir=tmp_path / "state", trusted_keys_dir=tmp_path / "keys", backend={"prefer": "cpu"},
        detect={"score_threshold": SCORE, "iou_threshold": IOU, **detect}))


def _cross_class_overlaps(dets: list[Detection]) -> list[tuple[Detection, Detection, float]]:
    return [(a, b, iou(a.box, b.box)) for i, a in enumerate(dets) for b in dets[:i]
            if a.class_id != b.class_id and iou(a.box, b.box) >= IOU]


def _class_aware_reference(eng: Engine, bundle: Bundle, frame: np.ndarray) -> list[Detection]:
    """The decoder's class-aware output for `frame`, from public pieces (the behaviour before the option)."""
    t, p = eng.backend.input, bundle.manifest.preprocess
    canvas, info = letterbox(frame, t.shape[1], pad_value=p.pad_value, bgr_input=p.color == "RGB")
    outs = eng.invoke_raw(to_input(canvas, t.dtype, t.scale or None, t.zero_point)[0])
    det = make_decoder(bundle, eng.backend).decode(outs, conf=SCORE, iou=IOU, max_det=100, letterbox=info)
    boxes = normalize_boxes(det.boxes, frame.shape[1], frame.shape[0])
    return [Detection(box=(b[0], b[1], b[2], b[3]), class_id=int(c), class_name=bundle.manifest.class_names[int(c)],
                      score=float(s)) for b, s, c in zip(boxes.tolist(), det.scores, det.classes, strict=True)]


def test_on_no_cross_class_duplicates_on_real_frames(bundle: Bundle, val_frames: list[np.ndarray],
                                                     tmp_path: Path) -> None:
    on, off = _engine(bundle, tmp_path), _engine(bundle, tmp_path, class_agnostic_nms=False)
    assert on.cfg.detect.class_agnostic_nms  # the default
    dup_off = n_on = 0
    for frame in val_frames:
        d_on, d_off = on.infer(frame), off.infer(frame)
        assert _cross_class_overlaps(d_on) == [], "class-agnostic NMS left a cross-class duplicate"
        assert all(iou(a.box, b.box) < IOU for i, a in enumerate(d_on) for b in d_on[:i])
        dup_off += len(_cross_class_overlaps(d_off))
        n_on += len(d_on)
        # on = off with its cross-class duplicates removed, highest score first (the same boxes, no new ones)
        keep = class_agnostic_nms(np.array([d.box for d in d_off], np.float32).reshape(-1, 4),
                                  np.array([d.score for d in d_off], np.float32), IOU)
        assert d_on == [d_off[i] for i in keep.tolist()]
    assert n_on > 0
    assert dup_off > 0, "the demo model should report some object twice with class-aware NMS (the bug)"


def test_off_is_exactly_the_class_aware_decoder(bundle: Bundle, val_frames: list[np.ndarray],
                                                tmp_path: Path) -> None:
    off = _engine(bundle, tmp_path, class_agnostic_nms=False)
    for frame in val_frames:
        got, want = off.infer(frame), _class_aware_reference(off, bundle, frame)
        assert [(d.class_id, d.score) for d in got] == [(d.class_id, d.score) for d in want]
        np.testing.assert_allclose([d.box for d in got], [d.box for d in want], atol=1e-6)
