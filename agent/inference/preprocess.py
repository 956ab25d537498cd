"""Letterbox preprocessing shared by the builder (calibration, evaluation) and the agent (every frame).

One function decides how a frame becomes the model input, so calibration, accuracy measurement and
deployment see exactly the same pixels. The recipe follows libreyolo's YOLO-NAS detect preprocessing
for input sizes up to 636 px: scale the longest side to the input size keeping the aspect ratio,
centre the image on a square canvas filled with `pad_value` (114), RGB, 0..1 for float models.
Pure numpy + OpenCV (no torch, no PIL).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class LetterboxInfo:
    """How a frame was placed on the canvas; enough to map boxes back to frame pixels."""

    ratio: float  # canvas pixels per frame pixel
    pad_x: int  # left offset of the image on the canvas
    pad_y: int  # top offset
    orig_w: int
    orig_h: int
    size: int  # canvas side


def letterbox_params(orig_w: int, orig_h: int, size: int) -> LetterboxInfo:
    if orig_w <= 0 or orig_h <= 0:
        raise ValueError(f"empty image ({orig_w}x{orig_h})")
    ratio = min(size / orig_h, size / orig_w)
    new_w, new_h = int(round(orig_w * ratio)), int(round(orig_h * ratio))
    return LetterboxInfo(ratio, (size - new_w) // 2, (size - new_h) // 2, orig_w, orig_h, size)


def letterbox(
    image: np.ndarray,
    size: int,
    pad_value: int = 114,
    bgr_input: bool = True,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Place an HxWx3 uint8 frame on a `size`x`size` RGB canvas.

    `bgr_input`: OpenCV frames are BGR; the model wants RGB. `out`: an optional preallocated
    (size, size, 3) uint8 array (e.g. a view of the interpreter's input tensor) to write into.
    """
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if bgr_input else cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    h, w = image.shape[:2]
    info = letterbox_params(w, h, size)
    new_w, new_h = int(round(w * info.ratio)), int(round(h * info.ratio))
    if (new_w, new_h) != (w, h):
        # INTER_AREA when shrinking avoids aliasing (closer to PIL's antialiased bilinear).
        interp = cv2.INTER_AREA if info.ratio < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    else:
        resized = image
    canvas = out if out is not None else np.empty((size, size, 3), dtype=np.uint8)
    if canvas.shape != (size, size, 3) or canvas.dtype != np.uint8:
        raise ValueError(f"out must be ({size}, {size}, 3) uint8, got {canvas.shape} {canvas.dtype}")
    canvas[...] = pad_value
    region = canvas[info.pad_y : info.pad_y + new_h, info.pad_x : info.pad_x + new_w]
    if bgr_input:
        region[...] = resized[:, :, ::-1]
    else:
        region[...] = resized
    return canvas, info


def to_input(
    canvas: np.ndarray,
    dtype: np.dtype | type | str,
    scale: float | None = None,
    zero_point: int | None = None,
    layout: str = "NHWC",
) -> np.ndarray:
    """Turn an RGB uint8 canvas into a batch-of-one model input.

    float models take 0..1; uint8/int8 models take pixels through their own input quantization
    (for our INT8 models scale is 1/255 and zero point 0 (uint8) so the raw pixels pass unchanged).
    """
    dt = np.dtype(dtype)
    x = canvas if layout == "NHWC" else canvas.transpose(2, 0, 1)
    x = x[None]
    if dt.kind == "f":
        return (x.astype(np.float32) / 255.0).astype(dt)
    if dt in (np.dtype(np.uint8), np.dtype(np.int8)):
        if not scale:
            raise ValueError("a quantized input needs its scale")
        zp = int(zero_point or 0)
        if dt == np.uint8 and zp == 0 and abs(scale * 255.0 - 1.0) < 1e-6:
            return np.ascontiguousarray(x)
        info = np.iinfo(dt)
        q = np.round(x.astype(np.float32) / 255.0 / scale + zp)
        return np.clip(q, info.min, info.max).astype(dt)
    raise ValueError(f"unsupported input dtype {dt}")


def unletterbox_boxes(boxes: np.ndarray, info: LetterboxInfo, clip: bool = True) -> np.ndarray:
    """Map (N, 4) xyxy boxes from canvas pixels back to frame pixels (clipped to the frame)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = (b[:, 0::2] - info.pad_x) / info.ratio
    b[:, 1::2] = (b[:, 1::2] - info.pad_y) / info.ratio
    if clip:
        b[:, 0::2] = np.clip(b[:, 0::2], 0, info.orig_w)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, info.orig_h)
    return b


def letterbox_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Frame pixels → canvas pixels (the inverse of unletterbox_boxes)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = b[:, 0::2] * info.ratio + info.pad_x
    b[:, 1::2] = b[:, 1::2] * info.ratio + info.pad_y
    return b


def normalize_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frame pixels → [0, 1] xyxy (what the agent publishes)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 0::2] /= float(width)
    b[:, 1::2] /= float(height)
    return np.clip(b, 0.0, 1.0)


def load_image(path: str) -> np.ndarray:
    """Read an image file as BGR uint8 (cv2), with a clear error instead of None."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return img


__all__ = [
    "LetterboxInfo",
    "letterbox",
    "letterbox_boxes",
    "letterbox_params",
    "load_image",
    "normalize_boxes",
    "to_input",
    "unletterbox_boxes",
]
