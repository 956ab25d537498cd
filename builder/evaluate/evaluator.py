"""Accuracy and latency of a checkpoint or any TFLite variant on a dataset's validation split.

Every model goes through the same code path: agent.inference.preprocess.letterbox → model → agent.inference.decode
(YoloNasDecoder, libreyolo's decode and NMS) → frame pixels → builder.evaluate.metrics.coco_map. Only the
"model" step differs (PyTorch fused body, or a TFLite interpreter through agent.inference.tflite), so the
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
from typing import Any, Protocol

import numpy as np

from agent.inference.decode import Detections, YoloNasDecoder
from agent.inference.preprocess import letterbox, load_image, to_input
from builder.evaluate.metrics import ImageBoxes, MapResult, coco_map

EVAL_CONF = 0.001
EVAL_IOU = 0.6
EVAL_MAX_DET = 300


class EvaluateError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ datasets


@dataclass
class EvalItem:
    image: Path
    boxes: np.ndarray  # (N, 4) pixel xyxy
    classes: np.ndarray  # (N,)


def load_dataset_items(path: Path, split: str = "val") -> tuple[list[str], list[EvalItem]]:
    """Class names and the items of one split, through builder.data.dataset (YOLO or COCO layouts)."""
    try:
        from builder.data.dataset import load_dataset
    except ImportError:  # pragma: no cover - builder.data.dataset is another module's job; keep working without it
        return _load_yolo_minimal(Path(path), split)
    from builder.data.dataset import DatasetError

    try:
        ds = load_dataset(Path(path))
        raw = ds.items(split)
    except (DatasetError, OSError, KeyError) as exc:
        raise EvaluateError(f"dataset {path}: {exc}") from exc
    items = [
        EvalItem(Path(it.image), np.asarray(it.boxes, np.float32).reshape(-1, 4), np.asarray(it.classes, np.int64).reshape(-1))
        for it in raw
    ]
    return list(ds.class_names), items


def _load_yolo_minimal(path: Path, split: str) -> tuple[list[str], list[EvalItem]]:
    import yaml

    root = path.parent if path.is_file() else path
    yml = path if path.is_file() else next((root / n for n in ("data.yaml", "dataset.yaml") if (root / n).exists()), None)
    if yml is None:
        raise EvaluateError(f"no data.yaml in {path}")
    cfg = yaml.safe_load(yml.read_text())
    names = cfg["names"]
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    img_dir = root / cfg.get(split, f"images/{split}")
    items: list[EvalItem] = []
    for img in sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"}):
        lbl = Path(str(img).replace(f"{'/'}images{'/'}", "/labels/")).with_suffix(".txt")
        h, w = load_image(str(img)).shape[:2]
        rows = np.loadtxt(lbl, ndmin=2) if lbl.exists() and lbl.stat().st_size else np.zeros((0, 5))
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
        items.append(EvalItem(img, boxes, rows[:, 0].astype(np.int64)))
    return names, items


# ------------------------------------------------------------------------------------------- runners


class Runner(Protocol):
    """A model that maps one RGB canvas to its raw outputs."""

    name: str
    imgsz: int

    def __call__(self, canvas: np.ndarray) -> list[np.ndarray]: ...

    def decoder(self, num_classes: int) -> YoloNasDecoder: ...


class TorchRunner:
    """The fused PyTorch body (FP32), NCHW input 0..1; the reference every TFLite file is measured against."""

    def __init__(self, model: Any, imgsz: int, threads: int | None = None, name: str = "pytorch_fp32") -> None:
        import torch

        from builder.export.onnx_body import make_body

        if threads:
            torch.set_num_threads(threads)
        self.body = make_body(model)
        self.imgsz = imgsz
        self.name = name
        self._shapes: list[tuple[int, ...]] | None = None

    def __call__(self, canvas: np.ndarray) -> list[np.ndarray]:
        import torch

        x = torch.from_numpy(to_input(canvas, np.float32, layout="NCHW"))
        with torch.no_grad():
            outs = [o.numpy() for o in self.body(x)]
        self._shapes = [o.shape for o in outs]
        return outs

    def decoder(self, num_classes: int) -> YoloNasDecoder:
        if self._shapes is None:
            self(np.full((self.imgsz, self.imgsz, 3), 114, np.uint8))
        assert self._shapes is not None
        return YoloNasDecoder(num_classes, self.imgsz, self._shapes)


class TFLiteRunner:
    def __init__(self, path: Path, threads: int | None = None, name: str | None = None) -> None:
        from agent.inference.tflite import make_interpreter, quant_params

        self.path = Path(path)
        self.name = name or self.path.stem
        try:
            self.interp = make_interpreter(str(path), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise EvaluateError(f"{path}: cannot load TFLite model: {exc}") from exc
        inp = self.interp.get_input_details()[0]
        self._in = inp
        shape = [int(d) for d in inp["shape"]]
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
            raise EvaluateError(f"{path}: expected a (1, S, S, 3) input, got {shape}")
        self.imgsz = shape[1]
        self._dtype = np.dtype(inp["dtype"])
        self._q = quant_params(inp)
        self._out = self.interp.get_output_details()

    def __call__(self, canvas: np.ndarray) -> list[np.ndarray]:
        q = self._q or (None, None)
        x = to_input(canvas, self._dtype, q[0], q[1])
        self.interp.set_tensor(self._in["index"], x)
        self.interp.invoke()
        return [self.interp.get_tensor(d["index"]).copy() for d in self._out]

    def decoder(self, num_classes: int) -> YoloNasDecoder:
        return YoloNasDecoder.from_details(self._out, num_classes, self.imgsz)


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
    items: Sequence[EvalItem],
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


def time_runner(runner: Runner, canvas: np.ndarray, n: int = 30, warmup: int = 3) -> float:
    """Median wall time (ms) of the model step alone on one input, after warm-up."""
    for _ in range(warmup):
        runner(canvas)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        runner(canvas)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


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
        from builder.convert.pipeline import load_model

        loaded = load_model(model_path)
        if loaded.num_classes != len(class_names):
            raise EvaluateError(
                f"checkpoint has {loaded.num_classes} classes, dataset has {len(class_names)}: not the same task"
            )
        runner = TorchRunner(loaded.model, imgsz or loaded.imgsz, threads)
    res = evaluate_runner(runner, items, len(class_names), bar(runner.name) if show_progress else None)
    return res, class_names
