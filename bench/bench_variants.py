"""CPU latency and size of every TFLite variant as ratios to the FP32 TFLite model, measured side by side.

    python bench/bench_variants.py [--model_path CKPT] [--calibration_dir DIR] [--imgsz 320] [--threads 2]

Without a checkpoint it converts a from-scratch yolo_nas_s (latency and size do not depend on the weight
values); with one, it converts that. The variants are timed in interleaved rounds (one invoke of each per
round) on the same letterboxed frame and thread count, so background load affects all alike.
Targets: model_quant at most 0.3 x the FP32 file's size; where the CPU has int8 dot-product instructions
(x86 VNNI, Arm SDOT/UDOT), model_quant at most 0.5 x FP32's latency (without them XNNPACK's INT8 kernels can
be no faster than float, so latency is judged only when --max-quant-latency-ratio is given).
Writes bench/results/variants.json; exit status 3 when a target is missed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from targets import Target, finish, int8_dot_product

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = [("fp32", "model_fp32.tflite"), ("cpu", "model_cpu.tflite"), ("dynamic", "model_dynamic.tflite"),
            ("quant", "model_quant.tflite")]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", type=Path, default=None)
    ap.add_argument("--calibration_dir", type=Path, default=None, help="default: a few synthetic images")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-quant-size-ratio", type=float, default=0.3, help="target: model_quant size / FP32 (0.3)")
    ap.add_argument("--max-quant-latency-ratio", type=float, default=None,
                    help="target: model_quant latency / FP32 (default 0.5 where the CPU has int8 dot products)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "variants.json")
    return ap.parse_args()


def calibration(args: argparse.Namespace) -> np.ndarray:
    """Letterboxed calibration frames: from --calibration_dir, else 16 synthetic images."""
    if args.calibration_dir:
        from builder.data.calibration import load_calibration

        calib, _ = load_calibration(args.calibration_dir, args.imgsz, n=100, warn=lambda m: None)
        return calib
    from agent.inference.preprocess import letterbox
    from builder.data.synth import render_image

    return np.stack([letterbox(render_image(i, args.imgsz, args.imgsz, ["circle", "square", "triangle"])[0],
                               args.imgsz)[0] for i in range(16)])


def time_variants(work: Path, frame: np.ndarray, threads: int, runs: int) -> dict[str, list[float]]:
    """Seconds per invoke of each variant, interleaved: one invoke of each per round, after 3 warm-ups."""
    from builder.evaluate.runners import TFLiteRunner

    runners = {v: TFLiteRunner(work / f, threads, v) for v, f in VARIANTS}
    for r in runners.values():
        for _ in range(3):
            r(frame)
    times: dict[str, list[float]] = {v: [] for v in runners}
    for _ in range(runs):
        for v, r in runners.items():
            t0 = time.perf_counter()
            r(frame)
            times[v].append(time.perf_counter() - t0)
    return times


def main() -> int:
    args = parse_args()

    from builder.export.onnx_body import export_onnx
    from builder.quantize.launch import run_tf_convert

    if args.model_path:
        from builder.export.loaded_model import load_model

        lm = load_model(args.model_path)
        model, arch = lm.model, lm.architecture
    else:
        from builder.train.checkpoint import build_model

        model, arch = build_model("yolo_nas_s", 3).eval(), "yolo_nas_s (untrained)"
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        calib = calibration(args)
        np.save(work / "calib.npy", calib)
        print(f"converting {arch} at {args.imgsz} px ...", flush=True)
        onnx_path = export_onnx(model, args.imgsz, work / "body.onnx")
        run_tf_convert(onnx_path, work / "calib.npy", work, work, [v for v, _ in VARIANTS], False,
                       lambda m: print(m, flush=True))
        times = time_variants(work, calib[0], args.threads, args.runs)
        sizes = {v: (work / f).stat().st_size for v, f in VARIANTS}
    med = {v: statistics.median(t) * 1000 for v, t in times.items()}
    rows = {
        v: {"latency_ms": med[v], "latency_ratio": med[v] / med["fp32"], "size_bytes": sizes[v],
            "size_ratio": sizes[v] / sizes["fp32"]}
        for v in times
    }
    print(f"\n{arch}, {args.imgsz} px, {args.threads} threads, median of {args.runs} interleaved runs")
    print(f"{'variant':<10} {'latency ms':>11} {'× FP32':>8} {'size MB':>9} {'× FP32':>8}")
    for v, row in rows.items():
        print(f"{v:<10} {row['latency_ms']:>11.2f} {row['latency_ratio']:>8.2f} {row['size_bytes'] / 1e6:>9.2f} "
              f"{row['size_ratio']:>8.2f}")
    result = {"benchmark": "variants", "model": arch, "imgsz": args.imgsz, "threads": args.threads, "runs": args.runs,
              "machine": platform.machine(), "python": platform.python_version(), "reference": "fp32", "variants": rows}
    aims = [Target("model_quant size / FP32", rows["quant"]["size_ratio"], args.max_quant_size_ratio, at_most=True)]
    max_latency = args.max_quant_latency_ratio
    if max_latency is None and int8_dot_product():
        max_latency = 0.5
    if max_latency is not None:
        aims.append(Target("model_quant latency / FP32", rows["quant"]["latency_ratio"], max_latency, at_most=True))
    return finish(result, aims, args.out)


if __name__ == "__main__":
    sys.exit(main())
