"""Calibration subset strategies (builder.data.calibration, `edge-builder calibration build --strategy`).

The pure selection on small hand-made lists of each image's classes and object-size bands; then the command on a
tiny benchmark-v2 dataset (builder.data.synth_photo), through builder.cli as a user runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.data.calibration import (
    STRATEGIES,
    CalibrationError,
    balanced_sample,
    build_calibration_set,
    count_keys,
    random_sample,
    select_images,
)

# 12 images: classes 0/1 common, class 2 in two images; band 32 (large) in two images, band 16 in three; 2 empty.
CLASSES: list[set[int]] = [{0}, {0}, {0, 1}, {1}, {0}, {1}, {2}, set(), {0}, {1, 2}, set(), {0}]
BANDS: list[set[int]] = [{8}, {8}, {8, 16}, {8}, {8}, {16}, {8}, set(), {32}, {16, 32}, set(), {8}]


def test_class_strategy_is_the_greedy_class_balance_of_before() -> None:
    picked = select_images("class", CLASSES, BANDS, 3, 6, seed=0)
    assert picked == balanced_sample(CLASSES, 3, 6, seed=0)[0]
    per_class = count_keys([CLASSES[i] for i in picked], range(3))
    assert per_class[2] == 2  # the rare class: both of its images
    assert len(picked) == 6


def test_scale_strategy_takes_every_image_of_the_rare_bands() -> None:
    picked = select_images("scale", CLASSES, BANDS, 3, 6, seed=0)
    per_band = count_keys([BANDS[i] for i in picked], (8, 16, 32))
    assert per_band[32] == 2 and per_band[16] == 3  # all of the rare bands, before more stride-8 images
    assert {8, 9} <= set(picked)
    # The class strategy, blind to sizes, misses large objects at this seed (why the scale strategy exists).
    by_class = select_images("class", CLASSES, BANDS, 3, 6, seed=0)
    assert count_keys([BANDS[i] for i in by_class], (8, 16, 32))[32] < 2


def test_images_without_objects_fill_at_most_a_tenth() -> None:
    for strategy in ("class", "scale"):
        picked = select_images(strategy, CLASSES, BANDS, 3, 12, seed=0)
        assert sum(not CLASSES[i] for i in picked) == 1  # 12 // 10
    many_empty = [set()] * 30 + [{8}] * 2
    assert len(select_images("scale", many_empty, many_empty, 1, 20, seed=0)) == 2 + 2


def test_random_strategy_is_a_seeded_uniform_sample() -> None:
    picked = select_images("random", CLASSES, BANDS, 3, 5, seed=1)
    assert picked == random_sample(12, 5, seed=1) == sorted(picked) and len(set(picked)) == 5
    assert random_sample(12, 50, seed=1) == list(range(12))
    # Uniform: over many seeds every image, empty ones included, is picked about 5/12 of the time.
    hits = [0] * 12
    for seed in range(600):
        for i in random_sample(12, 5, seed):
            hits[i] += 1
    assert all(abs(h / 600 - 5 / 12) < 0.08 for h in hits)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_is_deterministic_by_seed(strategy: str) -> None:
    bigger_c = CLASSES * 5
    bigger_b = BANDS * 5
    a = select_images(strategy, bigger_c, bigger_b, 3, 20, seed=4)
    assert a == select_images(strategy, bigger_c, bigger_b, 3, 20, seed=4)
    assert a != select_images(strategy, bigger_c, bigger_b, 3, 20, seed=5)


def test_unknown_strategy_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="unknown calibration strategy 'size'.*class, random, scale"):
        select_images("size", CLASSES, BANDS, 3, 5)
    with pytest.raises(CalibrationError, match="unknown calibration strategy"):
        build_calibration_set(tmp_path / "no-dataset", tmp_path / "out", strategy="size")


def test_command_lists_the_library_strategies() -> None:
    from builder.commands import calibration as cmd

    assert cmd.STRATEGIES == STRATEGIES


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from builder.data.synth_photo import make_photo_dataset

    return make_photo_dataset(tmp_path_factory.mktemp("cal") / "ds", n_train=24, n_val=1, n_test=0, imgsz=160, seed=2)


def _build(args: list[str]) -> int:
    from builder.cli import main

    return main(["calibration", "build", *args])


def test_cli_strategy_flag(photo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--dataset_path", str(photo_dataset), "--n", "8", "--imgsz", "320"]  # bands at the 320 px input
    assert _build([*common, "--out", str(tmp_path / "default")]) == 0
    assert _build([*common, "--out", str(tmp_path / "scale"), "--strategy", "scale"]) == 0
    assert _build([*common, "--out", str(tmp_path / "random"), "--strategy", "random"]) == 0
    assert "strategy scale" in capsys.readouterr().out
    info = {k: json.loads((tmp_path / k / "calibration.json").read_text()) for k in ("default", "scale", "random")}
    assert [info[k]["strategy"] for k in ("default", "scale", "random")] == ["class", "scale", "random"]
    # The default is today's class-balanced pick, file for file.
    lib = build_calibration_set(photo_dataset, tmp_path / "lib", n=8)
    assert info["default"]["files"] == lib["files"]
    for k, got in info.items():
        assert got["images"] == 8 == len(list((tmp_path / k / "images").iterdir())), k
        assert set(got["images_per_band"]) == set(got["objects_per_band"]) == {"8", "16", "32"}
        assert sum(got["objects_per_band"].values()) >= max(got["images_per_band"].values())
    bands = info["scale"]["images_per_band"]
    assert min(bands.values()) >= 2, bands  # every head level sees objects


def test_cli_rejects_an_unknown_strategy(photo_dataset: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _build(["--dataset_path", str(photo_dataset), "--out", str(tmp_path / "x"), "--strategy", "size"])
    assert exc.value.code == 2
    assert "invalid choice: 'size'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
