"""The stages that turn checked model files into a bundle: golden self-test data, report, manifest and signature."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.decode.yolo_nas import DECODER_NAMES
from agent.protocol.manifest import (
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    GoldenTest,
    Manifest,
    ModelFiles,
    OutputLayout,
    TensorSpec,
    VariantMetrics,
    default_needs,
    with_schema,
)
from agent.security.bundle import Bundle, file_entry, write_manifest
from agent.security.signing import SigningKey
from builder.convert.measure import Evaluation
from builder.convert.options import ConvertOptions
from builder.convert.stages import SHIPPED_VARIANTS, Calibration, OnnxBody, Prepared, Readiness
from builder.edgetpu import compiler as edgetpu
from builder.evaluate.report import write_report
from builder.evaluate.runners import TFLiteRunner
from builder.evaluate.score_reference import write_reference

BUNDLE_FILES = tuple(f"model_{v}.tflite" for v in SHIPPED_VARIANTS)
INTERMEDIATE_FILES = ("model_fp32.tflite", "body.onnx", "calib.npy")  # what --keep-intermediate copies


@dataclass
class Golden:
    """The INT8 model's input/output tensors; golden_input.npy / golden_expected.npy are in staging."""

    input: TensorSpec
    outputs: list[TensorSpec]


def golden_stage(quant: TFLiteRunner, calib: Calibration, staging: Path) -> Golden:
    """The agent's self-test data: one real calibration canvas through the real INT8 model."""
    np.save(staging / "golden_input.npy", quant.to_input(calib.canvases[0]))
    # One flat uint8 vector: every output raveled in the order of manifest.outputs.
    np.save(staging / "golden_expected.npy", np.concatenate([o.reshape(-1) for o in quant(calib.canvases[0])]))
    return Golden(quant.input_spec(), quant.output_specs())


@dataclass
class ReportInputs:
    opts: ConvertOptions
    prep: Prepared
    calib: Calibration
    body: OnnxBody
    parity: dict[str, Any]
    ranges: dict[str, Any]
    readiness: Readiness
    evaluation: Evaluation
    timings: dict[str, float]


def report_stage(r: ReportInputs, staging: Path) -> dict[str, Any]:
    """report.json / report.md / report.png (builder.evaluate.report) from every earlier stage's result."""
    out, lm = r.prep.out, r.prep.model
    report = {
        "name": r.prep.name, "version": r.opts.version, "created": datetime.now(UTC).isoformat(),
        "checkpoint": str(r.opts.model_path), "architecture": lm.architecture, "imgsz": r.prep.size,
        "class_names": lm.class_names, "dataset": str(r.opts.dataset_path) if r.opts.dataset_path else None,
        "calibration": {"source": str(r.opts.calibration_dir), "images": len(r.calib.canvases), "seed": r.opts.seed,
                        "files": r.calib.files[:1000], "per_tensor": r.opts.per_tensor, "coverage": r.calib.coverage},
        "class_head": r.opts.class_head,
        "onnx_ops": r.body.ops, "parity": r.parity, "ranges": r.ranges, "readiness": r.readiness.report,
        "edgetpu_compile": r.readiness.compiled,
        "edgetpu_command": edgetpu.compile_command(out / "model_quant.tflite", out),
        "variants": r.evaluation.variants, "threads": r.opts.threads, "latency_runs": r.opts.latency_runs,
        "int8_drop_ci95": list(r.evaluation.int8_drop_ci95) if r.evaluation.int8_drop_ci95 else None,
        "timings_s": dict(r.timings),
    }
    write_report(staging, report)
    return report


def manifest_stage(
    opts: ConvertOptions, prep: Prepared, golden: Golden, evaluation: Evaluation, staging: Path,
    signing_key: SigningKey | None,
) -> Manifest:
    """manifest.json over every file in staging (and manifest.sig when a key is given), schema 2: each
    backend's `needs` list (its model, the CPU fallback, the golden files) lets nodes skip the rest."""
    metrics = {
        k: VariantMetrics(map50_95=e.get("map50_95"), map50=e.get("map50"), latency_ms=e.get("latency_ms"),
                          size_bytes=e.get("size_bytes"), images=e.get("images"))
        for k, e in evaluation.variants.items()
    }
    files = [*BUNDLE_FILES, "golden_input.npy", "golden_expected.npy", "report.json", "report.md"]
    files += [f for f in ("report.png", "edgetpu_compiler.log", "model_edgetpu.tflite") if (staging / f).exists()]
    reference = None
    if evaluation.score_reference is not None:  # only with a dataset: the nodes' drift check compares with it
        reference = write_reference(staging, evaluation.score_reference).name
        files.append(reference)
    lm = prep.model
    models = ModelFiles(cpu="model_quant.tflite",
                        edgetpu="model_edgetpu.tflite" if "model_edgetpu.tflite" in files else None)
    golden_test = GoldenTest(input="golden_input.npy", expected="golden_expected.npy", model="cpu")
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=prep.name,
        version=opts.version,
        created=datetime.now(UTC),
        files=[file_entry(staging, f) for f in files],
        models=models,
        input=golden.input,
        outputs=golden.outputs,
        class_names=lm.class_names,
        layout=OutputLayout(decoder=DECODER_NAMES[opts.class_head], num_classes=lm.num_classes,
                            strides=lm.strides, reg_max=lm.reg_max),
        preprocess=lm.preprocess,
        metrics=metrics,
        golden=golden_test,
        score_reference=reference,
        needs=default_needs(models, golden_test, reference),
    )
    write_manifest(staging, manifest, signing_key)
    return manifest


def set_schema(bundle_dir: Path, schema_version: int, key: SigningKey | None) -> Manifest:
    """Rewrite a finished bundle's manifest as schema `schema_version` (1: for agents older than schema 2),
    signed again with `key`; without a key a signature of the old bytes would be wrong, so it goes."""
    bundle = Bundle.load(bundle_dir, complete=True)
    manifest = with_schema(bundle.manifest, schema_version)
    if manifest.to_bytes() != bundle.manifest_bytes:
        if key is None:
            (Path(bundle_dir) / SIGNATURE_NAME).unlink(missing_ok=True)
        write_manifest(Path(bundle_dir), manifest, key)
    return manifest


def keep_intermediate(work: Path, dest: Path) -> None:
    """Copy the scratch files worth a look (FP32 TFLite, ONNX body, calibration array) to `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in INTERMEDIATE_FILES:
        shutil.copy2(work / f, dest / f)
