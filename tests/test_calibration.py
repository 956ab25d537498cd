"""builder.data.calibration: image discovery (folders, .tar.gz), deterministic sampling, warnings, class balance."""

from __future__ import annotations

import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from builder.data.calibration import CalibrationError, find_images, load_calibration, sample_images


def _img(path: Path, value: int, size: tuple[int, int] = (40, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))


def test_recurses_and_letterboxes(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg", 10)
    _img(tmp_path / "sub" / "deeper" / "b.png", 20)
    (tmp_path / "notes.txt").write_text("not an image")
    _img(tmp_path / ".hidden" / "c.jpg", 30)
    assert [p.name for p in find_images(tmp_path)] == ["a.jpg", "b.png"]
    warnings: list[str] = []
    batch, names = load_calibration(tmp_path, 32, warn=warnings.append)
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.uint8
    assert names == ["a.jpg", "sub/deeper/b.png"]
    assert any("300" in w for w in warnings)  # fewer than the recommended 300
    assert (batch[1, 0, 0] == 114).all()  # letterbox padding (60x40 → 32x21, centred)


def test_tar_gz_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        _img(src / "calib" / f"{i}.jpg", 40 * i)
    archive = tmp_path / "calibration_data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "calib", arcname="wildfire_calibration_data")
    batch, names = load_calibration(archive, 32, warn=lambda m: None)
    assert len(batch) == 3 and names[0].startswith("wildfire_calibration_data/")


def test_sampling_is_deterministic(tmp_path: Path) -> None:
    files = [tmp_path / f"{i:03d}.jpg" for i in range(50)]
    a = sample_images(files, 10, seed=0)
    assert a == sample_images(list(reversed(files)), 10, seed=0)
    assert a != sample_images(files, 10, seed=1)
    assert a == sorted(a) and len(set(a)) == 10


def test_empty_and_imageless_sources_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no images"):
        load_calibration(tmp_path / "empty", 32)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.md").write_text("x")
    with pytest.raises(CalibrationError, match="no images"):
        load_calibration(tmp_path / "text", 32)
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "missing", 32)
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(CalibrationError, match="cannot extract"):
        load_calibration(tmp_path / "bad.tar.gz", 32)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(CalibrationError, match="could be read"):
        load_calibration(tmp_path / "broken", 32, warn=lambda m: None)


def test_build_is_class_balanced(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    from builder.data.calibration import build_calibration_set
    from builder.data.synth import make_dataset

    ds = make_dataset(tmp_path / "ds", n_train=24, n_val=2, imgsz=64, seed=3)
    info = build_calibration_set(ds, tmp_path / "calib", n=9)
    assert info["images"] == 9
    per_class = info["images_per_class"]
    assert isinstance(per_class, dict) and all(v >= 2 for v in per_class.values())
    assert len(find_images(tmp_path / "calib")) == 9
    again = build_calibration_set(ds, tmp_path / "calib2", n=9)
    assert again["files"] == info["files"]
