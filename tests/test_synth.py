"""builder.data.synth: deterministic YOLO-format dataset and real OpenCV video with ground truth.

Runs in both venvs (numpy + cv2 only; no torch)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import read_frames

from builder.data.synth import (
    FrameTruth,
    load_video_truth,
    make_dataset,
    make_video,
    render_image,
    truth_path,
)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _labels(root: Path, split: str) -> dict[str, list[list[float]]]:
    return {
        p.stem: [list(map(float, ln.split())) for ln in p.read_text().splitlines() if ln.strip()]
        for p in sorted((root / "labels" / split).glob("*.txt"))
    }


def test_dataset_layout_and_labels(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n_train=12, n_val=4, imgsz=128, seed=3)
    assert root == tmp_path / "ds"
    yaml_text = (root / "data.yaml").read_text()
    assert "train: images/train" in yaml_text and "val: images/val" in yaml_text
    assert '0: "circle"' in yaml_text and '2: "triangle"' in yaml_text
    for split, n in (("train", 12), ("val", 4)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        assert len(images) == n
        labels = _labels(root, split)
        assert set(labels) == {p.stem for p in images}
        for img_path in images:
            img = cv2.imread(str(img_path))
            assert img.shape == (128, 128, 3)
            rows = labels[img_path.stem]
            assert rows, f"{img_path.name} has no object"
            for cls, cx, cy, w, h in rows:
                assert cls in (0, 1, 2)
                assert 0 < w <= 1 and 0 < h <= 1
                assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
                assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
    # every class appears, at several scales
    rows = [r for rs in _labels(root, "train").values() for r in rs]
    assert {int(r[0]) for r in rows} == {0, 1, 2}
    widths = [r[3] for r in rows]
    assert max(widths) > 2 * min(widths)


def test_dataset_deterministic_by_seed(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", 5, 2, imgsz=96, seed=7)
    b = make_dataset(tmp_path / "b", 5, 2, imgsz=96, seed=7)
    c = make_dataset(tmp_path / "c", 5, 2, imgsz=96, seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    # growing the split keeps the first images identical (sub-seed per image)
    d = make_dataset(tmp_path / "d", 8, 2, imgsz=96, seed=7)
    assert (a / "images/train/train_00004.jpg").read_bytes() == (d / "images/train/train_00004.jpg").read_bytes()


def test_boxes_are_where_the_shapes_are() -> None:
    """The labelled box is the tight extent of the painted shape: pixels change inside it, not around it."""
    img, truth = render_image(11, 160, 160, max_objects=1)
    assert len(truth) == 1
    cls, (x0, y0, x1, y1) = truth[0]
    # Re-render the same scene without the object: identical RNG stream up to the objects.
    from builder.data.synth_scene import apply_lighting, render_background

    rng = np.random.default_rng(11)
    bg = render_background(rng, 160, 160)
    diff = np.abs(img.astype(np.int16) - apply_lighting(np.random.default_rng(0), bg, 0.0).astype(np.int16)).max(axis=2)
    ys, xs = np.nonzero(diff > 60)
    inside = (xs >= x0 - 1) & (xs < x1 + 1) & (ys >= y0 - 1) & (ys < y1 + 1)
    assert inside.mean() > 0.9, "strong changes should lie inside the labelled box"
    assert xs[inside].min() <= x0 + 3 and xs[inside].max() >= x1 - 4
    assert ys[inside].min() <= y0 + 3 and ys[inside].max() >= y1 - 4


def test_unknown_class_names_get_shapes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", 6, 2, imgsz=96, classes=["fire", "smoke"], seed=1)
    assert '1: "smoke"' in (root / "data.yaml").read_text()
    rows = [r for rs in _labels(root, "train").values() for r in rs]
    assert {int(r[0]) for r in rows} <= {0, 1}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_dataset(Path("/nonexistent-never-created"), 0, 1)
    with pytest.raises(ValueError, match=r"\.mp4 or \.avi"):
        make_video(Path("/tmp/x.mkv"), 3)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_real_file_and_truth(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    truths = make_video(path, n_frames=24, size=(320, 240), fps=12, seed=5)
    assert len(truths) == 24 and all(isinstance(t, FrameTruth) for t in truths)
    # written JSON == returned truth
    saved = load_video_truth(path)
    assert saved.frames == truths and saved.width == 320 and saved.height == 240 and saved.fps == 12
    assert json.loads(truth_path(path).read_text())["classes"] == ["circle", "square", "triangle"]

    frames = read_frames(path)
    assert len(frames) == 24
    assert frames[0].shape == (240, 320, 3)

    for t in truths:
        assert len(t.boxes) == len(t.class_ids) == len(t.class_names) >= 1
        for (x0, y0, x1, y1), cid, name in zip(t.boxes, t.class_ids, t.class_names, strict=True):
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert ["circle", "square", "triangle"][cid] == name
    # objects move
    assert truths[0].boxes != truths[10].boxes

    # the truth is where the pixels change: moving objects change their boxes far more than the rest
    a, b = frames[0].astype(np.int16), frames[10].astype(np.int16)
    diff = np.abs(a - b).mean(axis=2)
    mask = np.zeros(diff.shape, bool)
    for t in (truths[0], truths[10]):
        for x0, y0, x1, y1 in t.boxes:
            mask[int(y0 * 240) : int(np.ceil(y1 * 240)), int(x0 * 320) : int(np.ceil(x1 * 320))] = True
    assert diff[mask].mean() > 3 * diff[~mask].mean()


def test_video_deterministic(tmp_path: Path) -> None:
    t1 = make_video(tmp_path / "a.avi", 5, size=(160, 120), seed=2, write_json=False)
    t2 = make_video(tmp_path / "b.avi", 5, size=(160, 120), seed=2, write_json=False)
    assert t1 == t2
    assert not truth_path(tmp_path / "a.avi").exists()


def _synth_cli(argv: list[str]) -> int:
    from builder.commands import synth

    parser = argparse.ArgumentParser(prog="edge-builder")
    synth.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    assert _synth_cli(["synth", "dataset", str(tmp_path / "ds"), "--n-train", "3", "--n-val", "2", "--imgsz", "64"]) == 0
    assert len(list((tmp_path / "ds/images/train").glob("*.jpg"))) == 3
    assert _synth_cli(["synth", "video", str(tmp_path / "v.avi"), "--frames", "4", "--size", "160x120"]) == 0
    assert len(load_video_truth(tmp_path / "v.avi").frames) == 4
    assert _synth_cli(["synth", "dataset", str(tmp_path / "x"), "--classes", "a,a"]) == 1
    assert "distinct" in capsys.readouterr().err


def test_no_heavy_imports() -> None:
    import subprocess

    code = "import sys, builder.data.synth; print(sorted(m for m in ('torch', 'tensorflow', 'onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _object_hue(seed: int, palette: str) -> tuple[int, float]:
    """(class, median hue of the pixels the one object changed) of a one-object scene."""
    from builder.data.synth_scene import apply_lighting, render_background

    img, truth = render_image(seed, 160, 160, max_objects=1, palette=palette)
    bg = apply_lighting(np.random.default_rng(0), render_background(np.random.default_rng(seed), 160, 160), 0.0)
    changed = np.abs(img.astype(np.int16) - bg.astype(np.int16)).max(axis=2) > 60
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    saturated = changed & (hsv[..., 1] > 60)
    return truth[0][0], float(np.median(hsv[..., 0][saturated])) if saturated.any() else float("nan")


def test_class_palette_colours_each_class_from_its_own_hues() -> None:
    """--palette class: an object's hue lies in its class's sector (builder.data.synth_scene.class_hue), so colour
    tells the class; the random palette mixes them."""
    from builder.data.synth_scene import sector

    w = sector(3)
    near = []
    for seed in range(24):
        cls, hue = _object_hue(seed, "class")
        d = abs(hue - 2 * cls * w)
        near.append(min(d, 180 - d) <= 0.5 * w)
    assert np.mean(near) >= 0.9, near
    spread = {c: h for c, h in (_object_hue(s, "random") for s in range(24))}
    assert len(spread) == 3  # every class drawn; their hues need not sit in any sector
    with pytest.raises(ValueError, match="palette"):
        render_image(0, 64, 64, palette="rainbow")


def test_random_palette_is_the_default_output(tmp_path: Path) -> None:
    """Naming the default palette changes nothing (the shared test bundle's data stay byte-identical)."""
    a = make_dataset(tmp_path / "a", n_train=3, n_val=1, imgsz=64, seed=2)
    b = make_dataset(tmp_path / "b", n_train=3, n_val=1, imgsz=64, seed=2, palette="random")
    c = make_dataset(tmp_path / "c", n_train=3, n_val=1, imgsz=64, seed=2, palette="class")
    assert _digest(a) == _digest(b) != _digest(c)
    assert "class colours" in (c / "data.yaml").read_text()
