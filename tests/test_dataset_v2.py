"""Benchmark dataset v2 (builder.data.synth_photo, `edge-builder synth photo`): objects on the shipped photos,
sizes over every stride at 320 px, train/val/test splits that the loaders read, test kept out of training,
deterministic by seed. Also pins the v1 generator's output (the shared test bundle is built from it).

numpy + OpenCV only; a few seconds."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from builder.data.dataset import load_dataset, validate_dataset, write_yolo_view
from builder.data.photo_backgrounds import SHIPPED_DIR, BackgroundError, load_photos
from builder.data.strides import box_size, stride_for_size
from builder.data.synth_photo import SIZE_BANDS, make_photo_dataset, place_things, render_photo_scene
from builder.data.synth_scene import sector


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photo_dataset(tmp_path_factory.mktemp("v2") / "ds", n_train=40, n_val=8, n_test=16, seed=0)


def _label_sizes(root: Path, split: str, imgsz: int = 320) -> list[float]:
    sizes = []
    for lbl in sorted((root / "labels" / split).glob("*.txt")):
        for ln in lbl.read_text().splitlines():
            _, _, _, w, h = map(float, ln.split())
            sizes.append(box_size(w * imgsz, h * imgsz))
    return sizes


def test_shipped_photos_carry_their_licence() -> None:
    names = sorted(p.name for p in SHIPPED_DIR.iterdir())
    assert "LICENSE" in names and "README.md" in names
    assert "Apache License" in (SHIPPED_DIR / "LICENSE").read_text()
    readme = (SHIPPED_DIR / "README.md").read_text()
    photos = [n for n in names if n.endswith(".jpg")]
    assert len(photos) >= 5 and all(p in readme for p in photos)  # every photo named with its source
    assert len(load_photos()) == len(photos)


def test_splits_load_and_validate(v2: Path) -> None:
    pytest.importorskip("yaml")  # the agent venv has no yaml: the dataset loaders are builder-side
    ds = load_dataset(v2)
    assert ds.class_names == ["circle", "square", "triangle"]
    assert {s: len(ds.images(s)) for s in ("train", "val", "test")} == {"train": 40, "val": 8, "test": 16}
    report = validate_dataset(v2)
    assert report.usable, [p.message for p in report.problems]
    assert not [p for p in report.problems if p.severity == "error"]
    assert all(report.splits[s].boxes > 0 for s in ("train", "val", "test"))


def test_test_split_stays_out_of_training(v2: Path, tmp_path: Path) -> None:
    """The trainer trains on (and selects its checkpoint on) the YOLO view it writes: train and val only."""
    yaml = pytest.importorskip("yaml")
    yaml_path = write_yolo_view(load_dataset(v2), tmp_path / "view")
    cfg = yaml.safe_load(yaml_path.read_text())
    assert "test" not in cfg and {"train", "val"} <= set(cfg)
    assert not (tmp_path / "view" / "images" / "test").exists()
    assert len(list((tmp_path / "view" / "images" / "train").iterdir())) == 40
    assert "test: images/test" in (v2 / "data.yaml").read_text()


def test_every_stride_sees_positives_at_320(v2: Path) -> None:
    sizes = _label_sizes(v2, "train") + _label_sizes(v2, "test")
    per = {s: [x for x in sizes if stride_for_size(x) == s] for s in (8, 16, 32)}
    for s, xs in per.items():
        assert len(xs) >= 0.15 * len(sizes), (s, len(xs), len(sizes))
        lo, hi = SIZE_BANDS[s]
        # Labels are pixel-tight boxes of the drawn shapes: within a pixel or two of the band drawn from.
        assert lo - 2 <= min(xs) and max(xs) <= hi + 2, (s, min(xs), max(xs))
    summary = json.loads((v2 / "summary.json").read_text())
    counted = summary["splits"]["train"]["per_stride_at_320"]
    assert {int(k): v for k, v in counted.items()} == {
        s: sum(1 for x in _label_sizes(v2, "train") if stride_for_size(x) == s) for s in (8, 16, 32)}


def test_sizes_scale_with_the_image(tmp_path: Path) -> None:
    root = make_photo_dataset(tmp_path / "ds", n_train=12, n_val=1, n_test=0, imgsz=160, seed=1)
    sizes = [x * 2 for x in _label_sizes(root, "train", imgsz=160)]  # as seen by a model at 320 px
    assert {stride_for_size(x) for x in sizes} == {8, 16, 32}
    assert "test:" not in (root / "data.yaml").read_text()  # an empty test split is not listed


def test_deterministic_by_seed_and_growing_a_split_keeps_images(tmp_path: Path) -> None:
    a = make_photo_dataset(tmp_path / "a", n_train=3, n_val=2, n_test=2, seed=4)
    b = make_photo_dataset(tmp_path / "b", n_train=3, n_val=2, n_test=2, seed=4)
    assert _contents(a) == _contents(b)
    c = make_photo_dataset(tmp_path / "c", n_train=5, n_val=2, n_test=3, seed=4)
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for i in range(n):
            name = f"{split}_{i:05d}"
            assert (a / "images" / split / f"{name}.jpg").read_bytes() == (c / "images" / split / f"{name}.jpg").read_bytes()
    d = make_photo_dataset(tmp_path / "d", n_train=3, n_val=2, n_test=2, seed=5)
    assert _contents(a) != _contents(d)


def test_distractors_look_like_classes_and_are_never_labelled() -> None:
    photos = load_photos()
    classes = ["circle", "square", "triangle"]
    things = [t for seed in range(40) for t in place_things(np.random.default_rng(seed), 320, classes)]
    distractors = [t for t in things if t.cls < 0]
    labelled = [t for t in things if t.cls >= 0]
    assert len(distractors) > 10
    w = sector(len(classes))
    for t in labelled:  # a class object: its own shape, near-square proportions, a hue in its sector
        assert t.shape == classes[t.cls] and 0.85 <= t.aspect <= 1.16
        assert min(abs(t.hue - 2 * t.cls * w), 180 - abs(t.hue - 2 * t.cls * w)) <= 0.26 * w
    kinds = {("stretched" if d.aspect > 1.5 else "off-colour" if d.shape in classes else "other shape") for d in distractors}
    assert kinds == {"stretched", "off-colour", "other shape"}
    for seed in range(10):
        _, truth, quality = render_photo_scene((seed, 0, 0), 320, classes, photos)
        assert all(0 <= c < len(classes) for c, _ in truth) and 70 <= quality <= 95


def test_objects_are_where_the_boxes_are(v2: Path) -> None:
    """A labelled box's centre shows a class colour (saturation >= 150 when painted; photos are mostly duller)."""
    hits, total = 0, 0
    for img_path in sorted((v2 / "images" / "train").glob("*.jpg")):
        sat = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2HSV)[..., 1]
        for ln in filter(None, (v2 / "labels" / "train" / f"{img_path.stem}.txt").read_text().split("\n")):
            _, cx, cy, w, h = map(float, ln.split())
            if min(w, h) * 320 >= 24:  # big enough for a 5x5 patch well inside the shape
                x, y = int(cx * 320), int(cy * 320)
                total += 1
                hits += int(sat[y - 2:y + 3, x - 2:x + 3].mean() > 80)
    assert total > 20 and hits >= 0.8 * total, (hits, total)


def test_synth_photo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    from builder.commands import synth

    parser = argparse.ArgumentParser(prog="edge-builder")
    synth.register(parser.add_subparsers())

    def run(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        return int(args.func(args))

    assert run(["synth", "photo", str(tmp_path / "p"), "--n-train", "2", "--n-val", "1", "--n-test", "2",
                "--imgsz", "128", "--classes", "circle,star"]) == 0
    assert len(list((tmp_path / "p/images/test").glob("*.jpg"))) == 2
    assert "0: \"circle\"" in (tmp_path / "p/data.yaml").read_text()
    (tmp_path / "empty").mkdir()
    assert run(["synth", "photo", str(tmp_path / "q"), "--backgrounds", str(tmp_path / "empty")]) == 1
    assert "no readable photos" in capsys.readouterr().err


def test_own_backgrounds(tmp_path: Path) -> None:
    bg = tmp_path / "bg"
    bg.mkdir()
    cv2.imwrite(str(bg / "grey.png"), np.full((200, 300, 3), 90, np.uint8))
    root = make_photo_dataset(tmp_path / "ds", n_train=2, n_val=1, n_test=0, imgsz=96, backgrounds=bg)
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 2
    with pytest.raises(BackgroundError):
        load_photos(str(tmp_path / "ds" / "labels"))


def test_v1_generator_unchanged() -> None:
    """builder.data.synth's images feed the shared test bundle (its cache key hashes builder/data): dataset v2
    must not change a single pixel of them."""
    from builder.data.synth import render_image

    img, truth = render_image(0, 96, 64)
    assert hashlib.sha256(img.tobytes()).hexdigest() == "dd8b50303d1c3507c4b79170fe1bfc58d8d5877139cc45490e0cf9437e91186d"
    assert truth == [(1, (53.0, 3.0, 66.0, 15.0)), (2, (29.0, 8.0, 37.0, 17.0)), (2, (37.0, 11.0, 45.0, 19.0)),
                     (2, (82.0, 20.0, 92.0, 31.0))]
    img, _ = render_image(5, 96, 64)
    assert hashlib.sha256(img.tobytes()).hexdigest() == "b18250baf5b21bf2652528ec48b3b00f5d91f921314c80a44f8d09c119a87534"


def test_no_heavy_imports() -> None:
    import subprocess
    import sys

    code = ("import sys, builder.data.synth_photo; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
