"""Calibration coverage: how many labelled objects each head stride (8/16/32) sees in the calibration set.

INT8 calibration records each output's range over the calibration images. A stride whose class output never
sees an object there gets a range with no positive logit (zero point 255 in uint8): every score at that stride
is capped at 0.5 (docs/CONVERSION.md). This counts the objects per stride before conversion, from the YOLO
labels next to the calibration images, so the converter can warn (or, strict, fail) naming what is missing.

Where the labels are: the YOLO rule (the image path with its last `images` folder replaced by `labels`, suffix
`.txt`: a dataset's `images/train` folder, or a set from `edge-builder calibration build`), else `NAME.txt`
beside the image. Each box is scaled as the letterbox scales its image (longest side to the model's input size)
and counted at one stride by builder.data.strides.stride_for_size. Without any label file the coverage is
"unknown".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.data.layout import label_path_for
from builder.data.strides import STRIDES, box_size, describe_band, stride_band, stride_for_size
from builder.data.yolo_format import yolo_boxes

ANY_CLASS = 1 << 30  # coverage counts boxes of every class id; the class range is the dataset's business


def find_label(image: Path) -> Path | None:
    """The YOLO label file of a calibration image, or None."""
    for candidate in (label_path_for(image), image.with_suffix(".txt")):
        if candidate.is_file():
            return candidate
    return None


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header (PIL), decoding with OpenCV only when PIL cannot; None if unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - any failure: try a full decode
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return None if img is None else (int(img.shape[1]), int(img.shape[0]))


def _empty_counts(strides: Sequence[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for s in strides:
        lo, hi = stride_band(s, strides)
        out[s] = {"objects": 0, "images": 0, "band_px": [lo, None if math.isinf(hi) else hi]}
    return out


def count_coverage(root: Path, files: Sequence[str], imgsz: int, strides: Sequence[int] = STRIDES) -> dict[str, Any]:
    """Objects per stride in the calibration images `files` (paths relative to `root`) at input size `imgsz`.

    Returns a JSON-ready dict: `per_stride` {stride: objects, images, band_px}, `labelled_images`,
    `unlabelled_images`, `status` ("ok", "missing": some stride has no object, "unknown": no labels at all),
    `missing` (strides) and `warnings` (messages naming what is missing).
    """
    strides = sorted(int(s) for s in strides)
    per = _empty_counts(strides)
    labelled = 0
    for rel in files:
        img = Path(root) / rel
        lbl = find_label(img)
        size = image_size(img) if lbl is not None else None
        if lbl is None or size is None:
            continue
        labelled += 1
        w, h = size
        boxes, _, _ = yolo_boxes(lbl, w, h, ANY_CLASS, None)
        scale = imgsz / max(w, h)
        seen: set[int] = set()
        for x0, y0, x1, y1 in boxes.tolist():
            s = stride_for_size(box_size((x1 - x0) * scale, (y1 - y0) * scale), strides)
            per[s]["objects"] += 1
            seen.add(s)
        for s in seen:
            per[s]["images"] += 1
    return _verdict(per, len(files), labelled, imgsz, strides)


def _verdict(
    per: dict[int, dict[str, Any]], n: int, labelled: int, imgsz: int, strides: Sequence[int]
) -> dict[str, Any]:
    missing = [s for s in strides if per[s]["objects"] == 0] if labelled else []
    warnings: list[str] = []
    if not labelled:
        warnings.append(
            f"calibration coverage unknown: none of the {n} calibration images has a YOLO label file (labels/NAME.txt "
            "as in a dataset, or NAME.txt beside the image), so nothing tells which strides see objects; calibrate "
            "on a dataset's images/train folder or a set from `edge-builder calibration build` (it copies the labels)"
        )
    elif labelled < n:
        warnings.append(f"{n - labelled} of {n} calibration images have no label file: coverage counts the other "
                        f"{labelled}")
    for s in missing:
        warnings.append(
            f"no objects {describe_band(s, strides)} at {imgsz} px in the {labelled} labelled calibration images: "
            f"stride-{s} class outputs are calibrated on background only (their scores may be capped at 0.5); add "
            "calibration images with objects of that size"
        )
    status = "unknown" if not labelled else ("missing" if missing else "ok")
    return {
        "imgsz": imgsz, "rule": "size L = sqrt(w*h) at the model input; coarsest stride s with L >= 2*s",
        "images": n, "labelled_images": labelled, "unlabelled_images": n - labelled,
        "per_stride": {str(s): per[s] for s in strides}, "status": status, "missing": missing, "warnings": warnings,
    }


def summary_line(cov: dict[str, Any]) -> str:
    """'objects per stride at 320 px: 8: 412, 16: 230, 32: 0 (300 labelled images)'."""
    if cov["status"] == "unknown":
        return f"objects per stride at {cov['imgsz']} px: unknown (no labels for the {cov['images']} images)"
    counts = ", ".join(f"{s}: {v['objects']}" for s, v in cov["per_stride"].items())
    return f"objects per stride at {cov['imgsz']} px: {counts} ({cov['labelled_images']} labelled images)"
