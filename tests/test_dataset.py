"""builder.data.dataset: YOLO (both layouts) and COCO loading, validation report, and the train command's refusal."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("yaml")

from builder.data.dataset import load_dataset, validate_dataset, write_yolo_view  # noqa: E402
from builder.data.synth import make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth") / "ds", n_train=10, n_val=4, imgsz=96, seed=4)


def _boxes(ds_items: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {it.image.name: (it.boxes, it.classes) for it in ds_items}


def test_yolo_images_split_layout(synth: Path) -> None:
    ds = load_dataset(synth)
    assert ds.format == "yolo"
    assert ds.class_names == ["circle", "square", "triangle"]
    assert ds.splits == ["train", "val"]
    items = ds.items("train")
    assert len(items) == 10
    it = items[0]
    assert it.width == it.height == 96
    assert it.boxes.dtype == np.float32 and it.boxes.shape[1] == 4
    assert it.classes.dtype == np.int64 and len(it.classes) == len(it.boxes)
    # pixel xyxy, consistent with the YOLO label file
    row = [float(v) for v in (synth / "labels/train" / f"{it.image.stem}.txt").read_text().split()[:5]]
    cx, cy, w, h = (v * 96 for v in row[1:])
    np.testing.assert_allclose(it.boxes[0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-3)
    assert load_dataset(synth / "data.yaml").class_names == ds.class_names  # the yaml itself works too
    assert ds.items("valid") == ds.items("val")  # alias
    assert len(ds.fingerprint()) == 64 and ds.fingerprint() == load_dataset(synth).fingerprint()


def test_roboflow_train_images_layout(synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "rf"
    for src, dst in (("train", "train"), ("val", "valid")):
        shutil.copytree(synth / "images" / src, root / dst / "images")
        shutil.copytree(synth / "labels" / src, root / dst / "labels")
    # Roboflow writes paths relative to a parent folder that does not exist here.
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 3\nnames: ['circle', 'square', 'triangle']\n")
    ds = load_dataset(root)
    assert ds.splits == ["train", "val"]
    ref = _boxes(load_dataset(synth).items("val"))
    got = _boxes(ds.items("val"))
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_allclose(ref[k][0], got[k][0])
    # no yaml at all: classes.txt + discovered layout
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("circle\nsquare\ntriangle\n")
    assert len(load_dataset(root).items("train")) == 10


def _to_coco(synth: Path, out: Path) -> None:
    """Write the synthetic YOLO dataset as COCO JSON (category ids start at 1, as COCO's do)."""
    ds = load_dataset(synth)
    for split in ("train", "val"):
        images, anns = [], []
        shutil.copytree(synth / "images" / split, out / "images" / split)
        for i, it in enumerate(ds.items(split)):
            images.append({"id": i + 100, "file_name": it.image.name, "width": it.width, "height": it.height})
            for (x0, y0, x1, y1), c in zip(it.boxes.tolist(), it.classes.tolist(), strict=True):
                anns.append({"id": len(anns) + 1, "image_id": i + 100, "category_id": c + 1,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        cats = [{"id": k + 1, "name": n} for k, n in enumerate(ds.class_names)]
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )


def test_coco_json(synth: Path, tmp_path: Path) -> None:
    _to_coco(synth, tmp_path / "coco")
    ds = load_dataset(tmp_path / "coco")
    assert ds.format == "coco" and ds.class_names == ["circle", "square", "triangle"]
    ref, got = _boxes(load_dataset(synth).items("val")), _boxes(ds.items("val"))
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_allclose(ref[k][0], got[k][0], atol=1e-4)
        np.testing.assert_array_equal(ref[k][1], got[k][1])
    assert validate_dataset(tmp_path / "coco").usable
    # a single JSON file serves as the evaluation split
    single = load_dataset(tmp_path / "coco/annotations/instances_val.json")
    assert single.splits == ["val"] and len(single.items("val")) == 4


def test_yolo_view_round_trip(synth: Path, tmp_path: Path) -> None:
    _to_coco(synth, tmp_path / "coco")
    view_yaml = write_yolo_view(load_dataset(tmp_path / "coco"), tmp_path / "view")
    view = load_dataset(view_yaml)
    assert view.class_names == ["circle", "square", "triangle"]
    ref = sorted(it.boxes.sum() for it in load_dataset(synth).items("train"))
    got = sorted(it.boxes.sum() for it in view.items("train"))
    np.testing.assert_allclose(ref, got, rtol=1e-4)
    assert all(p.is_symlink() for p in (tmp_path / "view/images/train").iterdir())


@pytest.fixture()
def broken(synth: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(synth, root)
    lbl = root / "labels/train"
    (lbl / "train_00000.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")  # line 2: class 7
    (lbl / "train_00001.txt").write_text("1 0.95 0.5 0.3 0.2\n")  # x1 = 1.1
    (lbl / "train_00002.txt").write_text("1 0.5 0.5 0.2\n")  # 4 fields
    (lbl / "train_00003.txt").unlink()  # missing label: background (warning)
    (root / "images/train/train_00004.jpg").write_bytes(b"")  # empty image
    (root / "images/train/train_00005.jpg").write_bytes(b"not a jpeg at all")  # undecodable
    shutil.copy(root / "images/val/val_00000.jpg", root / "images/train/leak.jpg")  # val image in train
    shutil.copy(root / "labels/val/val_00000.txt", lbl / "leak.txt")
    return root


def test_validation_report_lists_problems_with_file_and_line(broken: Path) -> None:
    report = validate_dataset(broken)
    assert not report.usable
    by_code: dict[str, list] = {}
    for p in report.problems:
        by_code.setdefault(p.code, []).append(p)
    cls = by_code["class_out_of_range"][0]
    assert cls.file and cls.file.endswith("train_00000.txt") and cls.line == 2 and cls.severity == "error"
    out = by_code["box_outside_image"][0]
    assert out.file.endswith("train_00001.txt") and out.line == 1
    assert by_code["malformed_line"][0].file.endswith("train_00002.txt")
    missing = by_code["missing_label"][0]
    assert missing.severity == "warning" and missing.file.endswith("train_00003.txt")
    unreadable = {Path(p.file).name for p in by_code["unreadable_image"]}
    assert unreadable == {"train_00004.jpg", "train_00005.jpg"}
    dup = by_code["duplicate_image"][0]
    assert dup.severity == "error" and "leakage" in dup.message
    text = report.format_text()
    assert "train_00000.txt:2" in text and "NOT usable" in text
    assert report.splits["train"].images == 11 and report.splits["train"].readable_images == 9


def test_validation_of_unreadable_datasets(tmp_path: Path) -> None:
    assert validate_dataset(tmp_path / "nope").errors[0].code == "unreadable_dataset"
    (tmp_path / "d").mkdir()
    (tmp_path / "d/data.yaml").write_text("train: images/train\nval: images/val\n")
    r = validate_dataset(tmp_path / "d")
    assert not r.usable and "names" in r.errors[0].message
    (tmp_path / "d/data.yaml").write_text("names: [a]\ntrain: images/train\nval: images/val\n")
    r = validate_dataset(tmp_path / "d")
    assert not r.usable and "not found" in r.errors[0].message


def test_good_dataset_is_usable(synth: Path) -> None:
    report = validate_dataset(synth)
    assert report.usable and not report.problems
    assert report.splits["val"].images == 4 and report.splits["train"].boxes > 10


def _train_cli(argv: list[str]) -> int:
    from builder.commands import train

    parser = argparse.ArgumentParser(prog="edge-builder")
    train.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_train_refuses_bad_dataset(broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The guide's Step 1 command on unusable data: the report and exit status 2, before any training."""
    rc = _train_cli(["train", "--dataset_path", str(broken), "--no_pretrained", "--epochs", "1", "--batch_size", "2",
                     "--experiment_name", "bad", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "refusing to train" in err and "train_00000.txt:2" in err and "class id 7" in err
    assert not (tmp_path / "out/checkpoints/bad/ckpt_best.pth").exists()
    rc = _train_cli(["train", "--dataset-path", str(broken), "--validate-only"])
    assert rc == 2


def test_train_option_errors(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--dataset_path", str(synth), "--experiment_name", "x", "--output_dir", str(tmp_path)]
    assert _train_cli(base + ["--imgsz", "100"]) == 1
    assert "multiple of 32" in capsys.readouterr().err
    assert _train_cli(base + ["--device", "tpu"]) == 1
    assert _train_cli(base + ["--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
