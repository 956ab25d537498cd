"""CPU latency and size of every TFLite variant as ratios to the FP32 TFLite model, measured side by side.

    python bench/bench_variants.py [--model_path CKPT] [--calibration_dir DIR] [--imgsz 320] [--threads 2]
                                   [--rounds 30] [--work DIR] [--out FILE]

Without a checkpoint it converts a from-scratch yolo_nas_s (latency and size do not depend on the weight
values); with one, it converts that. `--work DIR` keeps the converted files there and reuses them on the next
run (no second conversion). Latency follows builder.evaluate.latency, the same method as the convert report:
warm-up, interleaved rounds on one letterboxed frame at a fixed thread count, median (p10–p90) per variant
and per-round (paired) ratios to FP32. model_cpu and model_quant are also timed with XNNPACK off
(`*_noxnn`), which shows how much of each graph XNNPACK runs. The result carries the CPU model and its
int8 ISA flags (builder.evaluate.cpuinfo).
Targets: model_quant at most 0.3 x the FP32 file's size; where the CPU has int8 dot-product instructions
(x86 VNNI, Arm SDOT/UDOT), model_quant at most 0.5 x FP32's latency (without them XNNPACK's INT8 kernels can
be no faster than float, so latency is judged only when --max-quant-latency-ratio is given).
Writes bench/results/variants.json; exit status 3 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from targets import Target, finish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILES = {"fp32": "model_fp32.tflite", "cpu": "model_cpu.tflite", "dynamic": "model_dynamic.tflite",
         "quant": "model_quant.tflite"}
# Timed variants: (key, file key, XNNPACK on). The runtime applies XNNPACK by default; off = builtin kernels.
TIMED = [("fp32", "fp32", True), ("cpu", "cpu", True), ("dynamic", "dynamic", True), ("quant", "quant", True),
         ("cpu_noxnn", "cpu", False), ("quant_noxnn", "quant", False)]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", type=Path, default=None)
    ap.add_argument("--calibration_dir", type=Path, default=None, help="default: a few synthetic images")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", "--runs", dest="rounds", type=int, default=30, help="interleaved rounds")
    ap.add_argument("--work", type=Path, default=None, help="keep (and reuse) the converted files here")
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


def convert(args: argparse.Namespace, work: Path, calib: np.ndarray) -> str:
    """Write the four variants into `work` (skipped when they are there already); the architecture's name."""
    if args.model_path:
        from builder.export.loaded_model import load_model

        lm = load_model(args.model_path)
        model, arch = lm.model, lm.architecture
    else:
        from builder.train.checkpoint import build_model

        model, arch = build_model("yolo_nas_s", 3).eval(), "yolo_nas_s (untrained)"
    if all((work / f).exists() for f in FILES.values()):
        print(f"reusing the converted files in {work}", flush=True)
        return arch
    from builder.export.onnx_body import export_onnx
    from builder.quantize.launch import run_tf_convert

    np.save(work / "calib.npy", calib)
    print(f"converting {arch} at {args.imgsz} px ...", flush=True)
    onnx_path = export_onnx(model, args.imgsz, work / "body.onnx")
    run_tf_convert(onnx_path, work / "calib.npy", work, work, list(FILES), False, lambda m: print(m, flush=True))
    return arch


def invoker(path: Path, threads: int, xnnpack: bool, frame: np.ndarray) -> Callable[[], object]:
    """One model step on a fixed frame: set the input, invoke, copy the outputs out (as the agent does)."""
    from agent.inference import tflite
    from builder.evaluate.runners import TFLiteRunner

    x = TFLiteRunner(path, threads).to_input(frame)
    interp = tflite.load_interpreter(path, threads, xnnpack=xnnpack)
    inp, outs = tflite.input_tensors(interp)[0], tflite.output_tensors(interp)

    def call() -> object:
        interp.set_tensor(inp.index, x)
        interp.invoke()
        return [interp.get_tensor(o.index).copy() for o in outs]

    return call


def measure(args: argparse.Namespace, work: Path, frame: np.ndarray) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Rows per timed variant (latency with spread, paired ratio, size), the method used, and XNNPACK's
    speed-up for model_cpu and model_quant (off / on, paired per round like every ratio)."""
    from builder.evaluate import latency

    calls = {k: invoker(work / FILES[f], args.threads, xnn, frame) for k, f, xnn in TIMED}
    times = latency.interleaved_times(calls, args.rounds)
    res = latency.summarize(times, "fp32", latency.WARMUP, args.threads)
    rows: dict[str, Any] = {}
    fp32_size = (work / FILES["fp32"]).stat().st_size
    for k, f, xnn in TIMED:
        size = (work / FILES[f]).stat().st_size
        rows[k] = {"file": FILES[f], "xnnpack": xnn, **res.entry(k), "size_bytes": size,
                   "size_ratio": size / fp32_size}
    speedup = {}
    for v in ("cpu", "quant"):
        s = latency.spread(latency.paired_ratios({"off": times[f"{v}_noxnn"], "on": times[v]}, "on")["off"])
        speedup[v] = {"median": s.median, "p10": s.p10, "p90": s.p90}
    return rows, res.method(), speedup


def print_table(arch: str, args: argparse.Namespace, rows: dict[str, Any], method: dict[str, Any]) -> None:
    print(f"\n{arch}, {args.imgsz} px: {method['text']}")
    print(f"{'variant':<12} {'latency ms (p10-p90)':>24} {'x FP32 (p10-p90)':>20} {'size MB':>8} {'x FP32':>7}")
    for v, r in rows.items():
        lat = f"{r['latency_ms']:.2f} ({r['latency_p10_ms']:.2f}-{r['latency_p90_ms']:.2f})"
        rat = f"{r['latency_ratio']:.2f} ({r['latency_ratio_p10']:.2f}-{r['latency_ratio_p90']:.2f})"
        print(f"{v:<12} {lat:>24} {rat:>20} {r['size_bytes'] / 1e6:>8.2f} {r['size_ratio']:>7.2f}")


def main() -> int:
    args = parse_args()
    from builder.evaluate import cpuinfo

    with tempfile.TemporaryDirectory() as td:
        work = args.work or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        calib = calibration(args)
        arch = convert(args, work, calib)
        rows, method, xnn = measure(args, work, calib[0])
    print_table(arch, args, rows, method)
    cpu = cpuinfo.read()
    print(f"CPU: {cpu.line()}")
    print("XNNPACK speed-up (off / on, paired): " + ", ".join(f"model_{v} {x['median']:.2f}x ({x['p10']:.2f}-"
                                                            f"{x['p90']:.2f})" for v, x in xnn.items()))
    result = {"benchmark": "variants", "model": arch, "imgsz": args.imgsz, "threads": args.threads,
              "rounds": args.rounds, "method": method, "cpu": cpu.as_dict(), "reference": "fp32",
              "xnnpack_speedup": xnn, "variants": rows}
    aims = [Target("model_quant size / FP32", rows["quant"]["size_ratio"], args.max_quant_size_ratio, at_most=True)]
    max_latency = args.max_quant_latency_ratio
    if max_latency is None and cpu.int8_dot_product:
        max_latency = 0.5
    if max_latency is not None:
        aims.append(Target("model_quant latency / FP32", rows["quant"]["latency_ratio"], max_latency, at_most=True))
    return finish(result, aims, args.out)


if __name__ == "__main__":
    sys.exit(main())
