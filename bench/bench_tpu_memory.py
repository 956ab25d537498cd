"""Edge TPU parameter memory of YOLO-NAS S/M/L at 320 px, against the chip's ~8 MiB on-chip parameter cache.

    python bench/bench_tpu_memory.py [--sizes s,m,l] [--imgsz 320] [--classes 3] [--work DIR] [--out FILE]

For each size, a freshly initialised network (tensor shapes, and so the bytes, do not depend on the weights'
values) goes the way `edge-builder convert` takes a checkpoint: the fused TPU body (builder.export.onnx_body),
then full INT8 with uint8 I/O (builder.quantize, per-channel, 16 synthetic calibration frames). The INT8 file
is read with builder.edgetpu.tflite_inspect: the parameter bytes are the bytes of every constant tensor
(int8 weights, int32 biases). A compiled model keeps up to ~8 MiB of parameters in the Edge TPU's SRAM; the rest
streams from host memory over USB or PCIe on every inference. edgetpu_compiler does not run here (x86-64 only,
docs/EDGETPU.md), so "streamed" below is the parameter bytes beyond 8 MiB: an estimate, which the compiler's own
log ("On-chip memory used for caching model parameters", "Off-chip memory used for streaming uncached model
parameters"; `edge-builder compile` parses both) replaces where the compiler runs.

Two parameter counts: the network as trained (libreyolo's, with QARepVGG's parallel branches and batch norms)
and as deployed (the fused body's ONNX initializers: each QARepVGG block is one 3x3 convolution by then).
Target (exit status 3 on a miss): every size stores its deployed weights as INT8, i.e. its parameter bytes are
between 0.95 and 1.1 times the deployed parameter count (float weights would be 4 times; the int32 biases add a
little). Writes bench/results/tpu_memory.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from targets import Target, finish  # noqa: E402  (bench/ on the path, as every benchmark)

MIB = 1024 * 1024
BYTES_PER_PARAM = (0.95, 1.1)
CALIB_FRAMES = 16


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="s,m,l", help="YOLO-NAS sizes, comma-separated (s,m,l)")
    ap.add_argument("--imgsz", type=int, default=320, help="input size in pixels (320, the Coral deployment size)")
    ap.add_argument("--classes", type=int, default=3, help="number of classes of the head (3)")
    ap.add_argument("--work", type=Path, default=None, help="keep the converted files here (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tpu_memory.json")
    return ap.parse_args(argv)


def calibration(imgsz: int) -> np.ndarray:
    """Letterboxed synthetic frames: ranges only need to exist, the bytes do not depend on them."""
    from agent.inference.preprocess import letterbox
    from builder.data.synth import render_image

    return np.stack([letterbox(render_image(i, imgsz, imgsz)[0], imgsz)[0][..., ::-1] for i in range(CALIB_FRAMES)])  # RGB


def deployed_parameters(onnx_path: Path) -> int:
    """Elements of the fused body's initializers: the weights and biases the INT8 file stores."""
    import onnx

    return int(sum(int(np.prod(t.dims)) for t in onnx.load(str(onnx_path)).graph.initializer))


def quantized_file(size: str, imgsz: int, classes: int, work: Path) -> tuple[Path, int]:
    """model_quant.tflite of an untrained yolo_nas_<size> (body.onnx beside it) and the trained network's
    parameter count."""
    from builder.export.onnx_body import export_onnx
    from builder.quantize.launch import run_tf_convert
    from builder.train.checkpoint import build_model

    model = build_model(f"yolo_nas_{size}", classes).eval()
    n_params = int(sum(p.numel() for p in model.parameters()))
    out = work / size
    out.mkdir(parents=True, exist_ok=True)
    quant = out / "model_quant.tflite"
    if not quant.exists():
        np.save(out / "calib.npy", calibration(imgsz))
        print(f"yolo_nas_{size}: {n_params / 1e6:.1f} M parameters, converting at {imgsz} px ...", flush=True)
        onnx_path = export_onnx(model, imgsz, out / "body.onnx")
        run_tf_convert(onnx_path, out / "calib.npy", out, out, ("quant",), False, lambda m: print(m, flush=True))
    return quant, n_params


def memory_row(quant: Path, n_params: int) -> dict[str, Any]:
    """Parameter bytes of the INT8 file against the on-chip cache."""
    from builder.edgetpu.tflite_inspect import ON_CHIP_BYTES, inspect_model

    info = inspect_model(quant)
    params = int(info["parameter_bytes"])
    deployed = deployed_parameters(quant.parent / "body.onnx")
    streamed = max(0, params - ON_CHIP_BYTES)
    return {
        "parameters_trained": n_params,
        "parameters_deployed": deployed,
        "parameter_bytes": params,
        "parameter_mib": params / MIB,
        "bytes_per_parameter": params / deployed,
        "on_chip_mib": ON_CHIP_BYTES / MIB,
        "fits_on_chip": params <= ON_CHIP_BYTES,
        "streamed_mib_estimate": streamed / MIB,
        "streamed_share_estimate": streamed / params,
        "file_bytes": quant.stat().st_size,
        "ops": sum(int(v) for v in info["op_counts"].values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for size in sizes:
            quant, n_params = quantized_file(size, args.imgsz, args.classes, work)
            rows[size] = memory_row(quant, n_params)
            r = rows[size]
            print(f"yolo_nas_{size} @ {args.imgsz}: {r['parameters_trained'] / 1e6:.1f} M params trained, "
                  f"{r['parameters_deployed'] / 1e6:.1f} M deployed, "
                  f"{r['parameter_mib']:.1f} MiB INT8 parameters vs {r['on_chip_mib']:.0f} MiB on chip: "
                  + ("fits" if r["fits_on_chip"] else f"~{r['streamed_mib_estimate']:.1f} MiB "
                     f"({r['streamed_share_estimate']:.0%}) streams from host memory per inference (estimate)"),
                  flush=True)
    targets = []
    for size, r in rows.items():
        targets.append(Target(f"yolo_nas_{size} bytes per parameter <=", r["bytes_per_parameter"],
                              BYTES_PER_PARAM[1], at_most=True))
        targets.append(Target(f"yolo_nas_{size} bytes per parameter >=", r["bytes_per_parameter"],
                              BYTES_PER_PARAM[0], at_most=False))
    result = {"imgsz": args.imgsz, "classes": args.classes, "sizes": rows,
              "method": "untrained network -> fused TPU body -> full INT8 (per-channel); constant tensor bytes of "
                        "model_quant.tflite; streamed = bytes beyond 8 MiB (estimate: no edgetpu_compiler here)",
              "on_chip_note": "the Edge TPU has about 8 MB of SRAM for caching parameters (coral.ai, 'Edge TPU "
                              "model requirements' / compiler docs); the compiler reports what it cached"}
    return finish(result, targets, args.out)


if __name__ == "__main__":
    sys.exit(main())
