"""The commands of the 320 px accuracy reference (bench/bench_accuracy.py), each as a user types it.

Every step is one `edge-builder` command run as a subprocess with the repo's .venv/bin/edge-builder, and is
skipped when its output is already in the work directory: the run takes hours and has to resume, and the same
outputs can be made by hand with exactly these commands (`--dry-run` prints them). The plan is pure (paths and
argument lists); `run_step` is the only part that runs anything.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "acc"
CONVERT_DEFAULT_CALIBRATION_IMAGES = 300  # convert samples this many from --calibration_dir unless told otherwise
# Calibration sets: name -> (strategy, images). class_300 is the default conversion's.
CALIB_SETS: dict[str, tuple[str, int]] = {
    "class_300": ("class", 300), "class_100": ("class", 100), "class_1000": ("class", 1000),
    "random_300": ("random", 300), "scale_300": ("scale", 300),
}
DEFAULT_CALIB = "class_300"
# Conversions: name -> (calibration set, convert flags beyond the default command's). Each differs from
# "default" in one option; a set of more than 300 images also needs --calibration_images to be used whole, and
# the raw head needs --allow-clipped-outputs: convert refuses a logits model whose calibrated class ranges cap
# every score, which is the very effect the head comparison measures (a no-op for the sigmoid head, whose
# class outputs have a fixed range; report.json's range check is recorded either way).
CONVERSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": (DEFAULT_CALIB, ()),
    "per_tensor": (DEFAULT_CALIB, ("--per-tensor",)),
    "logits": (DEFAULT_CALIB, ("--class-head", "logits", "--allow-clipped-outputs")),
    "class_100": ("class_100", ()),
    "class_1000": ("class_1000", ()),
    "random_300": ("random_300", ()),
    "scale_300": ("scale_300", ()),
}
KEEP_FLAG = "--keep-intermediate"  # the default conversion keeps model_fp32.tflite for its row


@dataclass(frozen=True)
class Step:
    """One command: `edge-builder ARGS`, done when `output` exists (or when `done_when` says so)."""

    name: str
    args: tuple[str, ...]
    output: Path
    done_when: Callable[[], bool] | None = None

    def done(self) -> bool:
        return self.done_when() if self.done_when is not None else self.output.exists()

    def command(self) -> str:
        return shlex.join(["edge-builder", *self.args])


@dataclass(frozen=True)
class Config:
    work: Path
    imgsz: int = 320
    n_train: int = 600
    n_val: int = 150
    n_test: int = 300
    epochs: int = 30
    batch: int = 16
    model: str = "yolo_nas_s"
    lr0: float | None = None  # None: train's own default
    calib_pool_size: int = 1000
    conversions: tuple[str, ...] = tuple(CONVERSIONS)  # which of CONVERSIONS to make ("default" always)

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def pool(self) -> Path:
        return self.work / "calib_pool"

    @property
    def experiment(self) -> Path:
        return self.work / "output" / "checkpoints" / EXPERIMENT

    @property
    def checkpoint(self) -> Path:
        return self.experiment / "ckpt_best.pth"

    def conversion(self, name: str) -> Path:
        return self.work / "conv" / name

    def intermediate(self, name: str) -> Path:
        return self.work / "conv" / f"{name}.intermediate"

    def calib_set(self, name: str) -> Path:
        return self.work / "calib" / name


def data_steps(cfg: Config) -> list[Step]:
    """The dataset (train/val/test) and the calibration pool: separate images, never test images."""
    s = str(cfg.imgsz)
    return [
        Step("data", ("synth", "photo", str(cfg.data), "--n-train", str(cfg.n_train), "--n-val", str(cfg.n_val),
                      "--n-test", str(cfg.n_test), "--imgsz", s), cfg.data / "data.yaml"),
        Step("calib_pool", ("synth", "photo", str(cfg.pool), "--n-train", str(cfg.calib_pool_size), "--n-val", "1",
                            "--n-test", "0", "--imgsz", s, "--seed", "1"), cfg.pool / "data.yaml"),
    ]


def train_args(cfg: Config, resume: bool) -> tuple[str, ...]:
    args = ["train", "--dataset_path", str(cfg.data), "--no_pretrained", "--epochs", str(cfg.epochs),
            "--batch_size", str(cfg.batch), "--experiment_name", EXPERIMENT, "--imgsz", str(cfg.imgsz),
            "--output_dir", str(cfg.work / "output"), "--workers", "1"]
    if cfg.model != "yolo_nas_s":
        args += ["--model", cfg.model]
    if cfg.lr0 is not None:
        args += ["--lr0", f"{cfg.lr0:g}"]
    return (*args, "--resume") if resume else tuple(args)


def resume_mismatch(cfg: Config) -> list[str]:
    """What differs between the run to resume (its train_config.json) and this bench's training options."""
    path = cfg.experiment / "train_config.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    ours = {"epochs": cfg.epochs, "batch_size": cfg.batch, "imgsz": cfg.imgsz, "model": cfg.model, "lr0": cfg.lr0}
    return [f"{k}: the run has {saved.get(k)}, this bench {v}" for k, v in ours.items() if saved.get(k) != v]


def epochs_done(experiment: Path) -> int:
    """The last epoch history.json records (0 without one)."""
    path = experiment / "history.json"
    if not path.exists():
        return 0
    return max((int(r["epoch"]) for r in json.loads(path.read_text())), default=0)


def train_action(cfg: Config) -> str:
    """'skip' (done: history reached --epochs, or a best checkpoint without a resumable one), 'resume', 'train'."""
    if epochs_done(cfg.experiment) >= cfg.epochs:
        return "skip" if cfg.checkpoint.exists() else "train"
    if (cfg.experiment / "ckpt_latest.pth").exists():
        return "resume"
    return "skip" if cfg.checkpoint.exists() else "train"


def train_step(cfg: Config) -> Step:
    """ckpt_best.pth exists from the first epoch on: training is done when train_action says 'skip'."""
    return Step("train", train_args(cfg, train_action(cfg) == "resume"), cfg.checkpoint,
                done_when=lambda: train_action(cfg) == "skip")


def calib_steps(cfg: Config) -> list[Step]:
    return [Step(f"calib_{name}", ("calibration", "build", "--dataset_path", str(cfg.pool), "--out",
                                   str(cfg.calib_set(name)), "--n", str(n), "--strategy", strategy,
                                   "--imgsz", str(cfg.imgsz)), cfg.calib_set(name) / "calibration.json")
            for name, (strategy, n) in CALIB_SETS.items()]


def convert_steps(cfg: Config) -> list[Step]:
    """The guide's convert command (no --dataset_path: no validation stage), then one per option."""
    steps = []
    for name, (calib, flags) in CONVERSIONS.items():
        if name not in cfg.conversions:
            continue
        args = ["convert", "--model_path", str(cfg.checkpoint), "--model_type", "yolo_nas", "--output_formats",
                "tflite", "--calibration_dir", str(cfg.calib_set(calib) / "images"), "--out",
                str(cfg.conversion(name)), "--name", EXPERIMENT, "--version", "1", *flags]
        n = CALIB_SETS[calib][1]
        if n > CONVERT_DEFAULT_CALIBRATION_IMAGES:
            args += ["--calibration_images", str(n)]
        if name == "default":
            args += [KEEP_FLAG, str(cfg.intermediate(name))]
        steps.append(Step(f"convert_{name}", tuple(args), cfg.conversion(name) / "manifest.json"))
    return steps


def edge_builder() -> list[str]:
    """The repo's installed command; `python -m builder.cli` where the venv has no script."""
    script = ROOT / ".venv" / "bin" / "edge-builder"
    return [str(script)] if script.exists() else [sys.executable, "-m", "builder.cli"]




def run_step(step: Step, logs: Path) -> dict[str, Any]:
    """Run `step` unless it is done; its record (command, skipped, seconds, log). Raises on failure."""
    record: dict[str, Any] = {"name": step.name, "command": step.command(), "output": str(step.output)}
    if step.done():
        print(f"[skip] {step.name}: {step.output} exists", flush=True)
        return {**record, "skipped": True}
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{step.name}.log"
    print(f"$ {record['command']}   (log: {log})", flush=True)
    t0 = time.monotonic()
    with log.open("w") as fh:
        rc = subprocess.run([*edge_builder(), *step.args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = round(time.monotonic() - t0, 1)
    if rc != 0 or not step.done():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{step.name} failed (exit {rc}, {seconds} s; {step.output} not done):\n{tail}")
    print(f"  {step.name}: {seconds} s", flush=True)
    return {**record, "skipped": False, "seconds": seconds, "log": str(log)}


def training_summary(experiment: Path) -> dict[str, Any]:
    """Epochs done, the best epoch and its validation mAP (history.json), train time (epochs summed; summary.json)."""
    path = experiment / "history.json"
    hist = json.loads(path.read_text()) if path.exists() else []
    bests = [r for r in hist if r.get("best")]
    best = bests[-1] if bests else None
    summary = experiment / "summary.json"
    return {
        "epochs_done": max((int(r["epoch"]) for r in hist), default=0),
        "best_epoch": best["epoch"] if best else None,
        "best_val_map50_95": best.get("map50_95") if best else None,
        "best_val_map50": best.get("map50") if best else None,
        "train_seconds_epochs": round(sum(float(r.get("seconds", 0.0)) for r in hist), 1) if hist else None,
        "last_run_seconds": json.loads(summary.read_text()).get("seconds") if summary.exists() else None,
        "checkpoint": str(experiment / "ckpt_best.pth"),
    }


def training_running(output_dir: Path) -> list[int]:
    """Ids of live `edge-builder train` processes writing to `output_dir` (a resume beside one would collide)."""
    pids = []
    target = output_dir.resolve()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            words = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if "train" in words and any((cwd / w).resolve() == target for w in words if "/" in w):
            pids.append(int(proc.name))
    return pids
