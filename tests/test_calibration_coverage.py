"""Calibration coverage (builder.quantize.coverage, builder.convert.checks.calibration_coverage_check): objects
per head stride in a calibration set, counted from the YOLO labels next to its images at the model's input size;
a warning names each stride without objects, strict mode fails, a set without labels is "unknown"."""

from __future__ import annotations

import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from builder.convert.checks import calibration_coverage_check
from builder.convert.options import ConvertError
from builder.data.strides import describe_band, stride_band, stride_for_size
from builder.quantize.coverage import count_coverage


def _image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 120, np.uint8))


def _label(path: Path, w: int, h: int, boxes_px: list[tuple[float, float]]) -> None:
    """One box per (bw, bh) in pixels, centred (sizes are what counts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"0 0.5 0.5 {bw / w:.6f} {bh / h:.6f}\n" for bw, bh in boxes_px))


@pytest.fixture()
def labelled(tmp_path: Path) -> Path:
    """A hand-made calibration folder in YOLO layout: images/ + labels/."""
    root = tmp_path / "calib"
    _image(root / "images" / "a.jpg", 320, 320)
    _label(root / "labels" / "a.txt", 320, 320, [(20, 20), (40, 40), (100, 80)])  # L 20, 40, 89.4
    _image(root / "images" / "b.jpg", 640, 480)  # letterboxed to 320: every box halves
    _label(root / "labels" / "b.txt", 640, 480, [(60, 60), (130, 130), (40, 200)])  # L at 320: 30, 65, 44.7
    _image(root / "images" / "c.jpg", 320, 320)
    _label(root / "labels" / "c.txt", 320, 320, [])  # a background image: labelled, no object
    return root


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


def test_stride_rule() -> None:
    assert [stride_for_size(x) for x in (1, 31.9, 32, 63.9, 64, 300)] == [8, 8, 16, 16, 32, 32]
    assert stride_band(8) == (0.0, 32.0) and stride_band(16) == (32.0, 64.0) and stride_band(32)[0] == 64.0
    assert describe_band(32) == "of at least 64 px" and describe_band(8) == "smaller than 32 px"


def test_counts_per_stride_on_a_labelled_folder(labelled: Path) -> None:
    cov = count_coverage(labelled, _files(labelled), 320)
    assert cov["status"] == "ok" and cov["missing"] == [] and cov["warnings"] == []
    assert cov["labelled_images"] == 3 and cov["unlabelled_images"] == 0
    per = {int(s): (v["objects"], v["images"]) for s, v in cov["per_stride"].items()}
    assert per == {8: (2, 2), 16: (2, 2), 32: (2, 2)}
    # The same set for a 160 px model: every box halves again, nothing reaches stride 32.
    cov160 = count_coverage(labelled, _files(labelled), 160)
    assert {int(s): v["objects"] for s, v in cov160["per_stride"].items()} == {8: 4, 16: 2, 32: 0}  # L 10 20 44.7 15 32.5 22.4


def test_warns_naming_what_is_missing(labelled: Path) -> None:
    (labelled / "labels" / "a.txt").write_text("0 0.5 0.5 0.05 0.05\n")  # 16 px
    (labelled / "labels" / "b.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # 64 x 48 px -> 27.7 at 320
    logged: list[str] = []
    cov = calibration_coverage_check(labelled, _files(labelled), 320, log=logged.append)
    assert cov["status"] == "missing" and cov["missing"] == [16, 32]
    text = "\n".join(logged)
    assert "objects per stride at 320 px: 8: 2, 16: 0, 32: 0 (3 labelled images)" in text
    assert ("warning: no objects of at least 64 px at 320 px in the 3 labelled calibration images: "
            "stride-32 class outputs are calibrated on background only") in text
    assert "no objects of 32-64 px at 320 px" in text and "stride-16" in text


def test_strict_fails_the_build(labelled: Path) -> None:
    files = _files(labelled)
    assert calibration_coverage_check(labelled, files, 320, strict=True)["status"] == "ok"  # complete: passes
    for lbl in (labelled / "labels").glob("*.txt"):
        lbl.write_text("0 0.5 0.5 0.05 0.05\n")
    with pytest.raises(ConvertError, match=r"--strict-calibration: no calibration objects at stride 16, 32"):
        calibration_coverage_check(labelled, files, 320, strict=True)


def test_folder_without_labels_is_unknown(tmp_path: Path) -> None:
    for name in ("x.jpg", "sub/y.png"):
        _image(tmp_path / "photos" / name, 200, 100)
    files = ["x.jpg", "sub/y.png"]
    logged: list[str] = []
    cov = calibration_coverage_check(tmp_path / "photos", files, 320, log=logged.append)
    assert cov["status"] == "unknown" and cov["labelled_images"] == 0 and cov["missing"] == []
    assert all(v["objects"] == 0 for v in cov["per_stride"].values())
    assert "objects per stride at 320 px: unknown (no labels for the 2 images)" in logged[0]
    assert "calibration coverage unknown: none of the 2 calibration images has a YOLO label file" in logged[1]
    with pytest.raises(ConvertError, match="no labels"):
        calibration_coverage_check(tmp_path / "photos", files, 320, strict=True)


def test_labels_beside_images_and_partly_labelled(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _image(root / "a.jpg", 320, 320)
    _label(root / "a.txt", 320, 320, [(100, 100)])  # darknet style: NAME.txt beside the image
    _image(root / "b.jpg", 320, 320)  # no label
    cov = count_coverage(root, ["a.jpg", "b.jpg"], 320)
    assert cov["labelled_images"] == 1 and cov["unlabelled_images"] == 1
    assert cov["per_stride"]["32"]["objects"] == 1 and cov["missing"] == [8, 16]
    assert any("1 of 2 calibration images have no label file" in w for w in cov["warnings"])


def test_archive_source(labelled: Path, tmp_path: Path) -> None:
    archive = tmp_path / "calib.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(labelled, arcname="set")
    files = [f"set/{f}" for f in _files(labelled)]
    cov = calibration_coverage_check(archive, files, 320)
    assert {int(s): v["objects"] for s, v in cov["per_stride"].items()} == {8: 2, 16: 2, 32: 2}


def test_calibration_build_copies_labels(tmp_path: Path) -> None:
    """`edge-builder calibration build` writes labels/ beside images/, so the converter can count its objects."""
    pytest.importorskip("yaml")
    from builder.data.calibration import build_calibration_set
    from builder.data.synth import make_dataset

    ds = make_dataset(tmp_path / "ds", n_train=8, n_val=1, imgsz=128, seed=0)
    info = build_calibration_set(ds, tmp_path / "cal", n=6)
    files = [str(f) for f in info["files"]]  # type: ignore[attr-defined]
    assert len(files) == 6 and all((tmp_path / "cal" / "labels" / f"{Path(f).stem}.txt").is_file() for f in files)
    cov = count_coverage(tmp_path / "cal" / "images", files, 128)
    expected = sum(len((ds / "labels" / "train" / f"{f.split('_', 1)[1][:-4]}.txt").read_text().splitlines())
                   for f in files)
    assert cov["labelled_images"] == 6 and sum(v["objects"] for v in cov["per_stride"].values()) == expected
