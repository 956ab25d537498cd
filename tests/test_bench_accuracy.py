"""bench/bench_accuracy.py, the 320 px accuracy reference: its commands, skip/resume logic, rows and targets.

The full bench on a tiny configuration takes about 8.5 min here (seven conversions of ~1 min each even at
64 px) and about 105 s with the default conversion only, so it is not run end to end here. Instead: the plan
(the exact commands, each option one flag off the default), the train/resume decision, the detection cache,
the grouping and targets on hand-made rows, and the bench's own main() on a work directory where training
and the default conversion are already done (the shared test bundle's checkpoint and bundle): it makes the
data and calibration sets with the real commands, skips what exists, evaluates the real models on the test
split, writes the result and exits 3 (a tiny model misses the targets); run again, it resumes from its caches.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import accuracy_steps as steps  # noqa: E402
import bench_accuracy as bench  # noqa: E402


def _cfg(work: Path, **kw: Any) -> steps.Config:
    return steps.Config(work=work, **kw)


def test_commands_are_the_users_commands(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    data, pool = steps.data_steps(cfg)
    assert data.command() == (f"edge-builder synth photo {tmp_path}/data --n-train 600 --n-val 150 --n-test 300 "
                              "--imgsz 320")
    assert pool.args[-8:] == ("--n-val", "1", "--n-test", "0", "--imgsz", "320", "--seed", "1")
    assert steps.train_args(cfg, resume=False) == (
        "train", "--dataset_path", f"{tmp_path}/data", "--no_pretrained", "--epochs", "30", "--batch_size", "16",
        "--experiment_name", "acc", "--imgsz", "320", "--output_dir", f"{tmp_path}/output", "--workers", "1")
    assert steps.train_args(cfg, resume=True)[-1] == "--resume"
    assert "--model" in steps.train_args(_cfg(tmp_path, model="yolo_nas_m"), resume=False)
    calib = {s.name: s.args for s in steps.calib_steps(cfg)}
    assert calib["calib_scale_300"][-6:] == ("--n", "300", "--strategy", "scale", "--imgsz", "320")
    conv = {s.name: list(s.args) for s in steps.convert_steps(cfg)}
    default = conv.pop("convert_default")
    assert "--dataset_path" not in default and default[default.index("--calibration_dir") + 1].endswith(
        "calib/class_300/images")
    # Besides its own --out, each option differs from the default in one option (+ what that option needs).
    extra = {name: [a for a in args if a not in default and "/conv/" not in a] for name, args in conv.items()}
    assert extra["convert_per_tensor"] == ["--per-tensor"]
    assert extra["convert_logits"] == ["--class-head", "logits", "--allow-clipped-outputs"]
    assert extra["convert_class_1000"] == [f"{tmp_path}/calib/class_1000/images", "--calibration_images", "1000"]
    assert extra["convert_class_100"] == [f"{tmp_path}/calib/class_100/images"]
    assert extra["convert_scale_300"] == [f"{tmp_path}/calib/scale_300/images"]
    assert default[-2:] == [steps.KEEP_FLAG, f"{tmp_path}/conv/default.intermediate"]  # model_fp32 for its row
    assert all(len(args) == len(default) - 2 for name, args in conv.items() if "300" in name)
    only = steps.convert_steps(_cfg(tmp_path, conversions=("default", "logits")))
    assert [s.name for s in only] == ["convert_default", "convert_logits"]


def _history(exp: Path, epochs: int, files: tuple[str, ...]) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    hist = [{"epoch": e, "train_loss": 1.0, "map50": 0.1 * e, "map50_95": 0.05 * e, "seconds": 10.0,
             "best": e in (1, 2)} for e in range(1, epochs + 1)]
    (exp / "history.json").write_text(json.dumps(hist))
    for f in files:
        (exp / f).write_bytes(b"x")


def test_train_is_skipped_resumed_or_started(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, epochs=5)
    assert steps.train_action(cfg) == "train"
    _history(cfg.experiment, 3, ("ckpt_best.pth", "ckpt_latest.pth"))
    assert steps.train_action(cfg) == "resume"  # ckpt_best.pth exists after epoch 1: not the done marker
    assert steps.train_step(cfg).args[-1] == "--resume" and not steps.train_step(cfg).done()
    (cfg.experiment / "train_config.json").write_text(json.dumps(
        {"epochs": 5, "batch_size": 16, "imgsz": 320, "model": "yolo_nas_s", "lr0": 0.002}))
    assert steps.resume_mismatch(cfg) == ["lr0: the run has 0.002, this bench None"]
    lr = _cfg(tmp_path, epochs=5, lr0=2e-3)
    assert steps.resume_mismatch(lr) == [] and steps.train_args(lr, resume=True)[-3:] == ("--lr0", "0.002", "--resume")
    _history(cfg.experiment, 5, ("ckpt_best.pth", "ckpt_latest.pth"))
    assert steps.train_action(cfg) == "skip" and steps.train_step(cfg).done()
    (cfg.experiment / "ckpt_latest.pth").unlink()
    _history(cfg.experiment, 2, ())
    assert steps.train_action(cfg) == "skip"  # a best checkpoint alone: trained elsewhere, nothing to resume
    summary = steps.training_summary(cfg.experiment)
    assert summary["epochs_done"] == 2 and summary["best_epoch"] == 2
    assert summary["best_val_map50_95"] == pytest.approx(0.1) and summary["train_seconds_epochs"] == 20.0


def test_run_step_skips_done_steps_and_fails_clearly(tmp_path: Path) -> None:
    done = tmp_path / "out.txt"
    done.write_text("x")
    rec = steps.run_step(steps.Step("s", ("no-such-verb",), done), tmp_path / "logs")
    assert rec["skipped"] and not (tmp_path / "logs").exists()  # nothing ran
    with pytest.raises(RuntimeError, match=r"s2 failed \(exit 0.*not done"):
        steps.run_step(steps.Step("s2", ("--help",), tmp_path / "never"), tmp_path / "logs")
    assert "usage" in (tmp_path / "logs" / "s2.log").read_text()


def test_detection_cache_is_tied_to_the_file_and_images(tmp_path: Path) -> None:
    from builder.evaluate.metrics import ImageBoxes

    dets = [ImageBoxes(np.array([[1, 2, 3, 4]], np.float32), np.array([2]), np.array([0.5], np.float32)),
            ImageBoxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))]
    cache = tmp_path / "m.npz"
    bench.save_detections(cache, "a:1:2", ["x.jpg", "y.jpg"], dets)
    got = bench.load_detections(cache, "a:1:2", ["x.jpg", "y.jpg"])
    assert got is not None and len(got) == 2 and got[1].boxes.shape == (0, 4)
    assert got[0].boxes.tolist() == [[1, 2, 3, 4]] and got[0].classes.tolist() == [2]
    assert bench.load_detections(cache, "a:1:3", ["x.jpg", "y.jpg"]) is None  # the model file changed
    assert bench.load_detections(cache, "a:1:2", ["x.jpg"]) is None  # other images


def _row(m: float, drop: float, ci: tuple[float, float] | None) -> dict[str, Any]:
    return {"map50_95": m, "map50": m + 0.1, "drop_map50_95_pts": drop, "drop_map50_pts": drop,
            "drop_map50_95_ci95_pts": None if ci is None else list(ci), "images": 300}


def test_rows_group_into_tables_and_targets() -> None:
    rows = {"pytorch_fp32": _row(0.6, 0.0, None), "default.quant": _row(0.597, -0.3, (-0.9, 0.2)),
            "default.cpu": _row(0.6, 0.0, (0.0, 0.0)), "logits.quant": _row(0.59, -1.0, (-2.0, 0.0))}
    grouped = bench.group_rows(rows)
    assert grouped["variants"]["fp32"] is None and grouped["variants"]["cpu"] is rows["default.cpu"]
    assert grouped["heads"] == {"sigmoid": rows["default.quant"], "logits": rows["logits.quant"]}
    assert grouped["options"]["per_channel"] is grouped["options"]["calib_300"] is rows["default.quant"]
    assert grouped["options"]["scale"] is None
    result = {"imgsz": 320, "images": 300, "objects": 900, **grouped}
    assert [t.ok for t in bench.targets(result)] == [True, True, True, True]
    text = "\n".join(bench.table_lines(result))
    assert "fp32           not measured" in text and "-0.90 … +0.20" in text and "reference" in text
    result["variants"]["quant"] = _row(0.594, -0.6, (-1.2, 0.1))  # a loss of 0.6, up to 1.2 points
    assert [t.ok for t in bench.targets(result)] == [True, True, False, False]


def test_unknown_conversion_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown bogus"):
        bench.config(bench.parse_args(["--work", str(tmp_path), "--conversions", "default,bogus"]))


@pytest.fixture
def done_work(tmp_path: Path, trained_bundle_dir: Path) -> Path:
    """A work directory where training and the default conversion are done (the test bundle's)."""
    work = tmp_path / "work"
    exp = work / "output" / "checkpoints" / "acc"
    exp.mkdir(parents=True)
    src = next((trained_bundle_dir / "output" / "checkpoints").glob("*/ckpt_best.pth"))
    for f in ("ckpt_best.pth", "history.json"):
        shutil.copy2(src.parent / f, exp / f)
    shutil.copytree(trained_bundle_dir / "bundle", work / "conv" / "default")
    return work


@pytest.mark.builder
def test_bench_resumes_from_done_steps_and_writes_its_result(done_work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")  # evaluates the PyTorch checkpoint: the builder venv only
    out = done_work / "result.json"
    argv = ["--work", str(done_work), "--imgsz", "128", "--n-train", "2", "--n-val", "1", "--n-test", "8",
            "--calib-pool-size", "4", "--skip-train", "--conversions", "default", "--out", str(out)]
    assert bench.main(argv) == 3  # a 128 px test model on 8 images: below the targets, as it should be
    res = json.loads(out.read_text())
    by_name = {s["name"]: s for s in res["steps"]}
    assert by_name["convert_default"]["skipped"] and by_name["train"]["skipped"]
    assert not by_name["data"]["skipped"] and not by_name["calib_scale_300"]["skipped"]
    assert res["split"] == "test" and res["images"] == 8 and res["data"]["splits"]["test"]["images"] == 8
    assert res["calibration"]["scale_300"]["strategy"] == "scale" and res["calibration"]["class_300"]["images"] == 4
    quant, ref = res["variants"]["quant"], res["variants"]["pytorch_fp32"]
    assert ref["map50_95"] > 0 and quant["images"] == 8
    lo, hi = quant["drop_map50_95_ci95_pts"]
    assert lo <= quant["drop_map50_95_pts"] <= hi
    assert quant["drop_map50_95_pts"] == pytest.approx((quant["map50_95"] - ref["map50_95"]) * 100)
    assert res["heads"]["logits"] is None and res["heads"]["sigmoid"] == quant
    assert res["training"]["epochs_done"] > 0 and res["run"]["commit"]
    assert [t["ok"] for t in res["targets"]][:2] == [False, False]
    assert "options" in capsys.readouterr().out
    # Again: every step and every evaluation is skipped, and the numbers are the same.
    assert bench.main(argv) == 3
    again = json.loads(out.read_text())
    assert all(s["skipped"] for s in again["steps"]) and again["variants"] == res["variants"]
    assert capsys.readouterr().out.count("[skip] evaluate") == 4


def test_drop_row_is_model_minus_reference_paired() -> None:
    from builder.evaluate.compare import drop_row
    from builder.evaluate.evaluator import EvalResult
    from builder.evaluate.metrics import ImageBoxes, coco_map

    box = np.array([[10, 10, 50, 50]], np.float32)
    gts = [ImageBoxes(box, np.array([0])) for _ in range(6)]
    hit = ImageBoxes(box, np.array([0]), np.array([0.9], np.float32))
    miss = ImageBoxes(box + 30, np.array([0]), np.array([0.9], np.float32))

    def ev(dets: list[ImageBoxes]) -> EvalResult:
        return EvalResult("m", coco_map(gts, dets, 1), dets)

    ref, worse = ev([hit] * 6), ev([hit] * 3 + [miss] * 3)
    same = drop_row(gts, ref, ref, 1)
    assert same["drop_map50_95_pts"] == 0 and same["drop_map50_95_ci95_pts"] == [0, 0]
    row = drop_row(gts, ref, worse, 1)
    assert row["drop_map50_95_pts"] == pytest.approx((worse.result.map50_95 - ref.result.map50_95) * 100)
    assert row["drop_map50_95_pts"] < 0
    lo, hi = row["drop_map50_95_ci95_pts"]
    assert lo < row["drop_map50_95_pts"] < hi <= 0
    with pytest.raises(ValueError, match="same images"):
        drop_row(gts[:3], ref, worse, 1)
