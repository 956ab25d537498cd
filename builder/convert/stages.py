"""The conversion stages that build and check the model files, each a function with typed inputs and outputs.

builder.convert.pipeline runs them in order (and times them); builder.convert.bundle has the stages that
write the bundle around the files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.preprocess import letterbox, load_image
from builder.convert.checks import ParityError, calibration_coverage_check, parity_check, range_check
from builder.convert.options import ConvertError, ConvertOptions, Log
from builder.convert.output import Workspace, check_output_dir, default_name, default_out_dir
from builder.data.calibration import CalibrationError, load_calibration
from builder.data.dataset import Item
from builder.edgetpu import compiler as edgetpu
from builder.edgetpu.tflite_inspect import readiness
from builder.evaluate.evaluator import bar, load_dataset_items
from builder.evaluate.runners import EvaluateError, TFLiteRunner, TorchRunner
from builder.export.loaded_model import LoadedModel, ModelLoadError, load_model
from builder.export.onnx_body import export_onnx, op_histogram
from builder.quantize.launch import QuantizeError, run_tf_convert

SHIPPED_VARIANTS = ("cpu", "dynamic", "quant")  # model_{v}.tflite go into the bundle; fp32 is the reference
VAL_CANVASES = 64  # validation images for the range check


@dataclass
class Prepared:
    """The loaded checkpoint and where its bundle goes; `items` is the validation split ([] without a dataset)."""

    model: LoadedModel
    size: int
    name: str
    out: Path
    items: list[Item]


@dataclass
class Calibration:
    canvases: np.ndarray  # (N, S, S, 3) uint8, letterboxed as on the device
    files: list[str]
    npy: Path
    coverage: dict[str, Any] = field(default_factory=dict)  # objects per stride (checks.calibration_coverage_check)


@dataclass
class OnnxBody:
    path: Path
    ops: dict[str, int]


@dataclass
class VariantFiles:
    """model_fp32.tflite stays in the scratch dir; the shipped variants are written into staging."""

    work: Path
    staging: Path

    def path(self, variant: str) -> Path:
        return (self.work if variant == "fp32" else self.staging) / f"model_{variant}.tflite"


@dataclass
class Runners:
    torch: TorchRunner
    fp32: TFLiteRunner
    shipped: dict[str, TFLiteRunner]  # cpu, dynamic, quant: each loaded and run once in the agent's runtime


@dataclass
class Readiness:
    report: dict[str, Any]  # static prediction (builder.edgetpu.tflite_inspect.readiness)
    compiled: dict[str, Any] | None  # the real compiler's parsed log, when it ran


def load_stage(opts: ConvertOptions, log: Log) -> Prepared:
    """The checkpoint, the input size, the destination (checked writable) and the validation items."""
    try:
        lm = load_model(opts.model_path)
    except ModelLoadError as exc:
        raise ConvertError(str(exc)) from exc
    size = int(opts.imgsz or lm.imgsz)
    if size % 32:
        raise ConvertError(f"--imgsz must be a multiple of 32 (the largest stride), got {size}")
    name = opts.name or default_name(opts.model_path)
    out = opts.out_dir if opts.out_dir is not None else default_out_dir(opts.model_path, name)
    check_output_dir(out)
    log(f"      {lm.architecture}, {lm.num_classes} classes {lm.class_names}, input {size}x{size} → {out}")
    items = validation_items(opts.dataset_path, lm.num_classes) if opts.dataset_path is not None else []
    return Prepared(lm, size, name, out, items)


def validation_items(dataset_path: Path, num_classes: int) -> list[Item]:
    """The dataset's validation split, checked against the checkpoint before any heavy work."""
    try:
        ds_names, items = load_dataset_items(dataset_path, "val")
    except EvaluateError as exc:
        raise ConvertError(str(exc)) from exc
    if len(ds_names) != num_classes:
        raise ConvertError(f"dataset {dataset_path} has {len(ds_names)} classes, the checkpoint {num_classes}")
    if not items:
        raise ConvertError(f"dataset {dataset_path} has no validation images")
    return items


def calibration_stage(opts: ConvertOptions, prep: Prepared, ws: Workspace, log: Log) -> Calibration:
    try:
        calib, names = load_calibration(
            opts.calibration_dir, prep.size, n=opts.n_calib, seed=opts.seed, pad_value=prep.model.preprocess.pad_value,
            warn=lambda m: log(f"      warning: {m}"), progress=bar("letterbox"),
        )
    except CalibrationError as exc:
        raise ConvertError(str(exc)) from exc
    log(f"      {len(calib)} images")
    coverage = calibration_coverage_check(opts.calibration_dir, names, prep.size, strict=opts.strict_calibration,
                                          log=log, strides=prep.model.strides)
    np.save(ws.work / "calib.npy", calib)
    return Calibration(calib, names, ws.work / "calib.npy", coverage)


def onnx_stage(opts: ConvertOptions, prep: Prepared, ws: Workspace, log: Log) -> OnnxBody:
    path = export_onnx(prep.model.model, prep.size, ws.work / "body.onnx", class_head=opts.class_head)
    ops = op_histogram(path)
    log(f"      class head: {opts.class_head}; " + ", ".join(f"{k} {v}" for k, v in ops.items()))
    return OnnxBody(path, ops)


def tflite_stage(opts: ConvertOptions, body: OnnxBody, calib: Calibration, ws: Workspace, log: Log) -> VariantFiles:
    """TensorFlow in its own process (builder.quantize.launch); the shipped files are copied into staging."""
    try:
        run_tf_convert(body.path, calib.npy, ws.work, ws.work, ("fp32", *SHIPPED_VARIANTS), opts.per_tensor, log)
    except QuantizeError as exc:
        raise ConvertError(str(exc)) from exc
    files = VariantFiles(ws.work, ws.staging)
    for v in SHIPPED_VARIANTS:
        shutil.copy2(ws.work / f"model_{v}.tflite", files.path(v))
    return files


def parity_stage(
    opts: ConvertOptions, prep: Prepared, files: VariantFiles, calib: Calibration, log: Log
) -> tuple[dict[str, Any], Runners]:
    """FP32 TFLite must equal PyTorch; every shipped variant must load and run in the agent's runtime."""
    torch_runner = TorchRunner(prep.model.model, prep.size, opts.threads, class_head=opts.class_head)
    fp32 = TFLiteRunner(files.path("fp32"), opts.threads, "fp32", class_head=opts.class_head)
    try:
        parity = parity_check(torch_runner, fp32, calib.canvases[: min(8, len(calib.canvases))])
    except ParityError as exc:
        raise ConvertError(str(exc)) from exc
    log(f"      max abs error {parity['max_abs_error']:.3g} over {parity['images']} images (tolerance {parity['atol']:g})")
    if not parity["ok"]:
        raise ConvertError(
            f"FP32 TFLite differs from PyTorch by {parity['max_abs_error']:.3g} (> {parity['atol']:g}): "
            "the ONNX/TF conversion changed the network"
        )
    shipped: dict[str, TFLiteRunner] = {}
    for v in SHIPPED_VARIANTS:
        try:
            shipped[v] = TFLiteRunner(files.path(v), opts.threads, name=v, class_head=opts.class_head)
            shipped[v](calib.canvases[0])
        except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
            raise ConvertError(f"model_{v}.tflite does not run in the TFLite runtime: {exc}") from exc
    return parity, Runners(torch_runner, fp32, shipped)


def range_stage(opts: ConvertOptions, prep: Prepared, runners: Runners, calib: Calibration, log: Log) -> dict[str, Any]:
    """The INT8 outputs against the FP32 ranges on calibration and validation images (builder.convert.checks)."""
    pad = prep.model.preprocess.pad_value
    val = (np.stack([letterbox(load_image(str(it.image)), prep.size, pad)[0] for it in prep.items[:VAL_CANVASES]])
           if prep.items else None)
    ranges = range_check(runners.shipped["quant"], runners.fp32, prep.model.num_classes, calib.canvases, val)
    for p in ranges["problems"]:
        log(f"      {p}")
    if not ranges["problems"]:
        log("      every INT8 output represents the FP32 range it needs")
    if not ranges["ok"] and not opts.allow_clipped_outputs:
        raise ConvertError(
            "INT8 calibration clipped the class outputs (see above): use calibration images like the "
            "deployment data with objects at every scale (edge-builder calibration build), or pass "
            "--allow-clipped-outputs to accept it"
        )
    return ranges


def readiness_stage(opts: ConvertOptions, files: VariantFiles, out: Path, log: Log) -> Readiness:
    """Static Edge TPU readiness; the real compile when edgetpu_compiler is on PATH (else the command to run)."""
    quant = files.path("quant")
    ready = readiness(quant)
    log(f"      {ready['summary']}")
    compiled: dict[str, Any] | None = None
    if opts.compile_edgetpu and edgetpu.find_compiler():
        try:
            compiled = edgetpu.compile_model(quant, files.staging, allow_partial=opts.allow_partial)
        except edgetpu.CompileError as exc:
            raise ConvertError(str(exc)) from exc
        log(f"      compiled: {compiled['tpu_ops']} ops on the Edge TPU, {compiled['cpu_ops']} on the CPU")
    else:
        log("      edgetpu_compiler not found: model_edgetpu.tflite not written. On an x86-64 Linux host run:")
        log(f"        {edgetpu.compile_command(out / 'model_quant.tflite', out)}")
    return Readiness(ready, compiled)
