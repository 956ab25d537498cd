"""Run builder.quantize.tf_convert in a child Python and relay its progress.

TensorFlow must not share a process with a freshly built libreyolo model (importing it first segfaults),
so the parent, which holds torch and the model, only ever starts the child (same interpreter).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

STAGE_LABELS = {
    "saved_model": "onnx2tf → SavedModel",
    "fp32": "model_fp32.tflite (parity reference)",
    "cpu": "model_cpu.tflite (FP16 weights)",
    "dynamic": "model_dynamic.tflite (dynamic range)",
    "quant": "model_quant.tflite (full INT8, uint8 I/O)",
}


class QuantizeError(RuntimeError):
    """The TensorFlow conversion failed; the message carries the end of its stderr and where its logs are."""


def run_tf_convert(
    onnx_path: Path,
    calib_npy: Path,
    out: Path,
    work: Path,
    variants: Sequence[str],
    per_tensor: bool,
    log: Callable[[str], None],
) -> None:
    """Write the requested variants into `out` (see builder.quantize.tf_convert), logging one line per stage."""
    cmd = [
        sys.executable, "-m", "builder.quantize.tf_convert",
        "--onnx", str(onnx_path), "--calib", str(calib_npy), "--out", str(out), "--work", str(work),
        "--variants", ",".join(variants),
    ]
    if per_tensor:
        cmd.append("--per-tensor")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "STAGE":
            size = int(parts[3])
            extra = f", {size / 1e6:.1f} MB" if size else ""
            log(f"      {STAGE_LABELS.get(parts[1], parts[1])}: {float(parts[2]):.1f} s{extra}")
    _, err = proc.communicate()
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        logs = [p for p in (work / "onnx2tf.log", work / "tflite_converter.log") if p.exists()]
        hint = f" (logs: {', '.join(map(str, logs))})" if logs else ""
        raise QuantizeError(f"TensorFlow conversion failed (exit {proc.returncode}){hint}:\n{tail}")
