"""Accuracy and latency of a checkpoint or any TFLite variant on a dataset's validation split.

Every model goes through the same code path: agent.inference.preprocess.letterbox → model → agent.inference.decode
(YoloNasDecoder, libreyolo's decode and NMS) → frame pixels → builder.evaluate.metrics.coco_map. Only the
"model" step differs (builder.evaluate.runners: the PyTorch fused body, or a TFLite interpreter), so the
numbers compare the models and nothing else. Evaluation thresholds are libreyolo's validation
defaults (conf 0.001, NMS IoU 0.6, 300 detections, COCO maxDets 100).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.decode import Detections
from agent.inference.preprocess import letterbox, load_image
from builder.data.dataset import DatasetError, Item, load_dataset
from builder.evaluate.metrics import ImageBoxes, MapResult, coco_map
from builder.evaluate.runners import EvaluateError, Runner, TFLiteRunner, TorchRunner
from builder.export.loaded_model import ModelLoadError, load_model

EVAL_CONF = 0.001
EVAL_IOU = 0.6
EVAL_MAX_DET = 300


def load_dataset_items(path: Path | str, split: str = "val") -> tuple[list[str], list[Item]]:
    """Class names and the items (image, pixel xyxy boxes, classes) of one split, via builder.data.dataset."""
    try:
        ds = load_dataset(Path(path))
        items = ds.items(split)
    except (DatasetError, OSError, KeyError) as exc:
        raise EvaluateError(f"dataset {path}: {exc}") from exc
    return list(ds.class_names), items


# ------------------------------------------------------------------------------------------ evaluate


@dataclass
class EvalResult:
    name: str
    result: MapResult
    detections: list[ImageBoxes] = field(default_factory=list)
    latency_ms: float | None = None  # median model-only time per image
    decode_ms: float | None = None  # median decode + NMS time per image

    def summary(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        d = self.result.as_dict(class_names)
        d["name"] = self.name
        d["latency_ms"] = self.latency_ms
        d["decode_ms"] = self.decode_ms
        return d


def _to_image_boxes(det: Detections) -> ImageBoxes:
    return ImageBoxes(det.boxes, det.classes, det.scores)


def evaluate_runner(
    runner: Runner,
    items: Sequence[Item],
    num_classes: int,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    decoder = runner.decoder(num_classes)
    canvas = np.empty((runner.imgsz, runner.imgsz, 3), np.uint8)
    dets: list[ImageBoxes] = []
    gts: list[ImageBoxes] = []
    t_model: list[float] = []
    t_dec: list[float] = []
    for i, it in enumerate(items):
        _, info = letterbox(load_image(str(it.image)), runner.imgsz, out=canvas)
        t0 = time.perf_counter()
        outs = runner(canvas)
        t1 = time.perf_counter()
        det = decoder.decode(outs, conf=EVAL_CONF, iou=EVAL_IOU, max_det=EVAL_MAX_DET, letterbox=info)
        t2 = time.perf_counter()
        t_model.append(t1 - t0)
        t_dec.append(t2 - t1)
        dets.append(_to_image_boxes(det))
        gts.append(ImageBoxes(it.boxes, it.classes))
        if progress:
            progress(i + 1, len(items))
    res = coco_map(gts, dets, num_classes)
    return EvalResult(
        runner.name,
        res,
        dets,
        latency_ms=statistics.median(t_model) * 1000 if t_model else None,
        decode_ms=statistics.median(t_dec) * 1000 if t_dec else None,
    )




def bar(label: str) -> Callable[[int, int], None]:
    """A minimal progress bar on stderr (tqdm-free so it works in the agent venv too).

    On a terminal it redraws in place; in logs it prints at most every 25%.
    """
    width = 30
    tty = sys.stderr.isatty()
    last = [-1]

    def update(done: int, total: int) -> None:
        frac = done / max(total, 1)
        if not tty:
            step = int(frac * 4)
            if step == last[0] and done < total:
                return
            last[0] = step
        fill = int(frac * width)
        line = f"  {label:<22} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}"
        if tty:
            print("\r" + line, end="\n" if done >= total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    return update


def evaluate_path(
    model_path: Path,
    dataset_path: Path,
    imgsz: int | None = None,
    threads: int | None = 2,
    split: str = "val",
    show_progress: bool = True,
) -> tuple[EvalResult, list[str]]:
    """Evaluate a checkpoint (.pth/.pt) or a .tflite file; returns the result and the class names."""
    model_path = Path(model_path)
    if not model_path.exists():
        raise EvaluateError(f"{model_path} does not exist")
    class_names, items = load_dataset_items(Path(dataset_path), split)
    if not items:
        raise EvaluateError(f"dataset {dataset_path} has no {split} images")
    runner: Runner
    if model_path.suffix == ".tflite":
        runner = TFLiteRunner(model_path, threads)
    else:
        try:
            loaded = load_model(model_path)
        except ModelLoadError as exc:
            raise EvaluateError(str(exc)) from exc
        if loaded.num_classes != len(class_names):
            raise EvaluateError(
                f"checkpoint has {loaded.num_classes} classes, dataset has {len(class_names)}: not the same task"
            )
        runner = TorchRunner(loaded.model, imgsz or loaded.imgsz, threads)
    res = evaluate_runner(runner, items, len(class_names), bar(runner.name) if show_progress else None)
    return res, class_names
