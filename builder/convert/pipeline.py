"""`edge-builder convert`: checkpoint → INT8 TFLite variants → a signed model bundle with measured numbers.

The conversion is the list `STAGES`, run in order; each stage prints `[i/n] title`, is timed (the report's
`timings_s` come from this list) and stores its typed result on the `ConvertRun`:

 1. load the checkpoint (builder.export.loaded_model), check the output dir and the dataset;
 2. calibration set: images (folder or .tar.gz), deterministic sample, the agent's letterbox;
 3. export the fully fused TPU body to ONNX (builder.export.onnx_body);
 4. in a subprocess (TensorFlow must not share a process with a freshly built libreyolo model):
    onnx2tf → SavedModel → model_fp32 / model_cpu (FP16 weights) / model_dynamic / model_quant (INT8);
 5. parity: FP32 TFLite against PyTorch on real images, max abs error, fail above tolerance;
 6. quantized-range check of every output (the "calibration logits problem");
 7. Edge TPU readiness (static) and, when `edgetpu_compiler` is on PATH, the real compile;
 8. accuracy (with a dataset) and CPU latency of every variant;
 9. golden self-test data from the real INT8 model;
10. report.json / .md / .png;
11. manifest.json and its signature.

Stages 1-3 and 5-8 live in builder.convert.stages / .measure, 9-11 in builder.convert.bundle. The bundle is
built in a staging directory and renamed into place only when every stage succeeded (builder.convert.output).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.inference.decode.yolo_nas import ClassHead
from agent.security.signing import SigningKey
from builder.convert import bundle, measure, stages
from builder.convert.options import DEFAULT_CLASS_HEAD, ConvertError, ConvertOptions, Log, check_options
from builder.convert.output import Workspace, install

__all__ = ["STAGES", "ConvertError", "ConvertOptions", "ConvertRun", "Stage", "convert", "run_conversion"]

T = TypeVar("T")


def _need(value: T | None) -> T:
    """An earlier stage's result; the stage order guarantees it is there."""
    if value is None:
        raise RuntimeError("conversion stage run out of order")
    return value


@dataclass
class ConvertRun:
    """The state of one conversion: the options and every finished stage's result."""

    opts: ConvertOptions
    signing_key: SigningKey | None
    log: Log
    timings: dict[str, float] = field(default_factory=dict)
    ws: Workspace | None = None
    prepared: stages.Prepared | None = None
    calibration: stages.Calibration | None = None
    body: stages.OnnxBody | None = None
    files: stages.VariantFiles | None = None
    parity: dict[str, Any] | None = None
    runners: stages.Runners | None = None
    ranges: dict[str, Any] | None = None
    readiness: stages.Readiness | None = None
    evaluation: measure.Evaluation | None = None
    golden: bundle.Golden | None = None
    report: dict[str, Any] | None = None


@dataclass(frozen=True)
class Stage:
    title: Callable[[ConvertRun], str]
    run: Callable[[ConvertRun], None]


def _load(r: ConvertRun) -> None:
    r.prepared = stages.load_stage(r.opts, r.log)
    r.ws = Workspace.open(r.prepared.out)  # only now: the destination is known and writable


def _calibrate(r: ConvertRun) -> None:
    r.calibration = stages.calibration_stage(r.opts, _need(r.prepared), _need(r.ws), r.log)


def _onnx(r: ConvertRun) -> None:
    r.body = stages.onnx_stage(r.opts, _need(r.prepared), _need(r.ws), r.log)


def _tflite(r: ConvertRun) -> None:
    r.files = stages.tflite_stage(r.opts, _need(r.body), _need(r.calibration), _need(r.ws), r.log)


def _parity(r: ConvertRun) -> None:
    r.parity, r.runners = stages.parity_stage(r.opts, _need(r.prepared), _need(r.files), _need(r.calibration), r.log)


def _ranges(r: ConvertRun) -> None:
    r.ranges = stages.range_stage(r.opts, _need(r.prepared), _need(r.runners), _need(r.calibration), r.log)


def _readiness(r: ConvertRun) -> None:
    r.readiness = stages.readiness_stage(r.opts, _need(r.files), _need(r.prepared).out, r.log)


def _evaluate(r: ConvertRun) -> None:
    r.evaluation = measure.evaluate_stage(
        r.opts, _need(r.prepared), _need(r.runners), _need(r.files), _need(r.calibration), r.log
    )


def _golden(r: ConvertRun) -> None:
    r.golden = bundle.golden_stage(_need(r.runners).shipped["quant"], _need(r.calibration), _need(r.ws).staging)


def _report(r: ConvertRun) -> None:
    inputs = bundle.ReportInputs(
        r.opts, _need(r.prepared), _need(r.calibration), _need(r.body), _need(r.parity), _need(r.ranges),
        _need(r.readiness), _need(r.evaluation), r.timings,
    )
    r.report = bundle.report_stage(inputs, _need(r.ws).staging)


def _manifest(r: ConvertRun) -> None:
    bundle.manifest_stage(r.opts, _need(r.prepared), _need(r.golden), _need(r.evaluation), _need(r.ws).staging,
                          r.signing_key)


STAGES: tuple[Stage, ...] = (
    Stage(lambda r: f"loading checkpoint {r.opts.model_path}", _load),
    Stage(lambda r: f"calibration set from {r.opts.calibration_dir}", _calibrate),
    Stage(lambda r: "exporting the fused TPU body to ONNX", _onnx),
    Stage(lambda r: "TensorFlow: onnx2tf and TFLiteConverter (subprocess)", _tflite),
    Stage(lambda r: "parity: FP32 TFLite vs PyTorch on real images", _parity),
    Stage(lambda r: "quantized-range check (INT8 outputs vs FP32)", _ranges),
    Stage(lambda r: "Edge TPU readiness", _readiness),
    Stage(lambda r: "accuracy and latency of every variant"
          + ("" if _need(r.prepared).items else " (latency only: no --dataset_path)"), _evaluate),
    Stage(lambda r: "golden self-test", _golden),
    Stage(lambda r: "report", _report),
    Stage(lambda r: "manifest" + (", signature" if r.signing_key else " (unsigned)"), _manifest),
)


def run_stages(run: ConvertRun, stage_list: Sequence[Stage] = STAGES) -> None:
    """Run every stage in order, logging `[i/n] title` and recording its wall time under its title."""
    for i, stage in enumerate(stage_list, 1):
        title = stage.title(run)
        run.log(f"[{i}/{len(stage_list)}] {title}")
        t0 = time.perf_counter()
        stage.run(run)
        run.timings[title] = round(time.perf_counter() - t0, 2)


def run_conversion(opts: ConvertOptions, log: Log | None = None) -> Path:
    """Convert per `opts`; returns the installed bundle directory. Nothing is left behind on failure."""
    run = ConvertRun(opts, check_options(opts), log or _print)
    t0 = time.perf_counter()
    try:
        run_stages(run)
        ws = _need(run.ws)
        if opts.keep_intermediate is not None:
            bundle.keep_intermediate(ws.work, opts.keep_intermediate)
        install(ws.staging, ws.out)
    except BaseException:
        if run.ws is not None:
            run.ws.discard()
        raise
    finally:
        if run.ws is not None:
            run.ws.close()
    out = _need(run.ws).out
    run.log(f"bundle written to {out} in {time.perf_counter() - t0:.0f} s"
            + (" (signed)" if run.signing_key else " (unsigned: edge-builder sign)"))
    return out


def _print(msg: str) -> None:
    print(msg, flush=True)


def convert(
    model_path: Path | str,
    calibration_dir: Path | str,
    out_dir: Path | str | None = None,
    imgsz: int | None = None,
    key: Path | str | None = None,
    dataset_path: Path | str | None = None,
    version: int = 1,
    name: str | None = None,
    model_type: str = "yolo_nas",
    output_formats: Sequence[str] = ("tflite",),
    n_calib: int = 300,
    seed: int = 0,
    per_tensor: bool = False,
    class_head: ClassHead = DEFAULT_CLASS_HEAD,
    threads: int = 2,
    latency_runs: int = 20,
    allow_clipped_outputs: bool = False,
    allow_partial: bool = False,
    strict_calibration: bool = False,
    compile_edgetpu: bool = True,
    keep_intermediate: Path | str | None = None,
    log: Log = _print,
) -> Path:
    """Convert a checkpoint to a model bundle directory and return its path (see the module docstring)."""
    opts = ConvertOptions(
        model_path=Path(model_path), calibration_dir=Path(calibration_dir),
        out_dir=Path(out_dir) if out_dir is not None else None, imgsz=imgsz,
        key=Path(key) if key is not None else None,
        dataset_path=Path(dataset_path) if dataset_path is not None else None, version=version, name=name,
        model_type=model_type, output_formats=tuple(output_formats), n_calib=n_calib, seed=seed,
        per_tensor=per_tensor, class_head=class_head, threads=threads, latency_runs=latency_runs,
        allow_clipped_outputs=allow_clipped_outputs, allow_partial=allow_partial,
        strict_calibration=strict_calibration,
        compile_edgetpu=compile_edgetpu,
        keep_intermediate=Path(keep_intermediate) if keep_intermediate is not None else None,
    )
    return run_conversion(opts, log)
