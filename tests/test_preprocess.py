"""agent.inference.preprocess: the letterbox every model input goes through (agent venv compatible)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.inference.preprocess import (
    letterbox,
    letterbox_boxes,
    letterbox_params,
    normalize_boxes,
    to_input,
    unletterbox_boxes,
)


def test_landscape_frame_is_centred_with_grey_bands() -> None:
    img = np.zeros((240, 320, 3), np.uint8)
    img[..., 2] = 200  # BGR red
    canvas, info = letterbox(img, 160)
    assert canvas.shape == (160, 160, 3) and canvas.dtype == np.uint8
    assert info.ratio == pytest.approx(0.5)
    assert (info.pad_x, info.pad_y) == (0, 20)
    assert (canvas[:20] == 114).all() and (canvas[140:] == 114).all()
    # RGB order on the canvas: red lands in channel 0.
    assert (canvas[20:140, :, 0] == 200).all() and (canvas[20:140, :, 2] == 0).all()


def test_boxes_round_trip_and_clip() -> None:
    info = letterbox_params(640, 360, 320)
    boxes = np.array([[10, 20, 300, 200], [600, 300, 640, 360]], np.float32)
    back = unletterbox_boxes(letterbox_boxes(boxes, info), info)
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    outside = unletterbox_boxes(np.array([[-50, -50, 400, 400]], np.float32), info)
    assert outside.min() >= 0 and outside[0, 2] <= 640 and outside[0, 3] <= 360
    norm = normalize_boxes(boxes, 640, 360)
    assert norm.max() <= 1.0 and norm[1, 2] == pytest.approx(1.0)


def test_writes_into_a_preallocated_tensor() -> None:
    buf = np.zeros((1, 96, 96, 3), np.uint8)
    img = np.full((50, 100, 3), 7, np.uint8)
    canvas, info = letterbox(img, 96, out=buf[0])
    assert canvas.base is not None and (buf[0] == canvas).all()
    assert info.pad_y == (96 - 48) // 2


def test_to_input_follows_the_tensor_quantization() -> None:
    canvas = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    f = to_input(canvas, np.float32)
    assert f.shape == (1, 4, 4, 3) and f.max() == pytest.approx(47 / 255)
    assert to_input(canvas, np.float32, layout="NCHW").shape == (1, 3, 4, 4)
    u = to_input(canvas, np.uint8, 1 / 255, 0)
    assert (u[0] == canvas).all()  # 1/255, 0: raw pixels pass unchanged
    i8 = to_input(canvas, np.int8, 1 / 255, -128)
    assert (i8[0].astype(int) == canvas.astype(int) - 128).all()
    with pytest.raises(ValueError):
        to_input(canvas, np.uint8, None, None)


def test_rejects_non_images() -> None:
    with pytest.raises(ValueError):
        letterbox(np.zeros((10, 10, 5), np.uint8), 32)
    with pytest.raises(ValueError):
        letterbox_params(0, 10, 32)
