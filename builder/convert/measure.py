"""Accuracy and CPU latency of every variant, side by side, and the INT8 drop's confidence interval."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from builder.convert.options import ConvertOptions, Log
from builder.convert.stages import SHIPPED_VARIANTS, Calibration, Prepared, Runners, VariantFiles
from builder.evaluate import latency
from builder.evaluate.evaluator import EvalResult, bar, evaluate_runner
from builder.evaluate.metrics import ImageBoxes, paired_bootstrap
from builder.evaluate.runners import Runner
from builder.evaluate.score_reference import ScoreReference, reference_from_detections


@dataclass
class Evaluation:
    variants: dict[str, dict[str, Any]]  # key → mAP (with a dataset), latency (latency.LatencyResult.entry), size
    int8_drop_ci95: tuple[float, float] | None  # quant vs pytorch_fp32, mAP50-95, paired bootstrap
    latency_method: dict[str, Any] | None = None  # latency.method_dict: how the latencies were measured
    score_reference: ScoreReference | None = None  # model_quant's scores on the validation split (drift check)


def evaluate_stage(
    opts: ConvertOptions, prep: Prepared, runners: Runners, files: VariantFiles, calib: Calibration, log: Log
) -> Evaluation:
    order: list[tuple[str, Runner]] = [("pytorch_fp32", runners.torch), ("fp32", runners.fp32)]
    order += [(v, runners.shipped[v]) for v in SHIPPED_VARIANTS]
    results: dict[str, dict[str, Any]] = {}
    evals: dict[str, EvalResult] = {}
    for key, runner in order:
        entry: dict[str, Any] = {}
        if prep.items and key != "fp32":  # FP32 TFLite = PyTorch (parity checked): latency/size reference only
            ev = evaluate_runner(runner, prep.items, prep.model.num_classes, bar(key))
            evals[key] = ev
            entry.update(map50_95=ev.result.map50_95, map50=ev.result.map50, images=ev.result.images,
                         per_class=ev.result.as_dict(prep.model.class_names)["per_class"], decode_ms=ev.decode_ms)
        entry["size_bytes"] = files.path(key).stat().st_size if key != "pytorch_fp32" else None
        results[key] = entry
    # One latency measurement for all variants (builder.evaluate.latency, the method `make bench` uses too).
    canvas = calib.canvases[0]
    lat = latency.measure({k: partial(r, canvas) for k, r in order}, "fp32", opts.latency_runs, opts.threads)
    for key, entry in results.items():
        entry.update(lat.entry(key))
        acc = f"mAP50-95 {entry['map50_95']:.4f} mAP50 {entry['map50']:.4f}, " if "map50_95" in entry else ""
        log(f"      {key:<13} {acc}{lat.ms[key].text('.1f')} ms, {lat.ratio[key].text()} × FP32 TFLite")
    ci, ref = None, None
    if prep.items and "quant" in evals:
        ci = int8_interval(prep, evals, results, log)
        ref = reference_from_detections(evals["quant"].detections, source="model_quant.tflite on the validation split")
    return Evaluation(results, ci, lat.method(), ref)


def int8_interval(
    prep: Prepared, evals: dict[str, EvalResult], results: dict[str, dict[str, Any]], log: Log
) -> tuple[float, float]:
    gts = [ImageBoxes(it.boxes, it.classes) for it in prep.items]
    ci = paired_bootstrap(gts, evals["pytorch_fp32"].detections, evals["quant"].detections, prep.model.num_classes)
    drop = results["quant"]["map50_95"] - results["pytorch_fp32"]["map50_95"]
    log(f"      INT8 vs PyTorch FP32: {drop * 100:+.2f} mAP50-95 points "
        f"(95% CI {ci[0] * 100:+.2f} … {ci[1] * 100:+.2f}, paired bootstrap)")
    return ci
