"""ONNX body → SavedModel (onnx2tf 2.x) → TFLite variants (TFLiteConverter). TensorFlow lives only here.

Run as a subprocess: `python -m builder.quantize.tf_convert --onnx body.onnx --calib calib.npy --out DIR`.
`import tensorflow` before libreyolo builds a model segfaults the process, so the parent (which holds
torch and the model) never imports TensorFlow; this child never imports torch.

Writes into --out: model_fp32.tflite (parity reference), model_cpu.tflite (FP16 weights, float I/O;
the conventional file that every runtime prepares), model_dynamic.tflite (dynamic-range INT8
weights), model_quant.tflite (full integer: INT8 builtins only, uint8 input and output). Prints one
`STAGE <name> <seconds>` line per finished stage so the parent can show progress; onnx2tf's own
chatter goes to onnx2tf.log in the work dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

VARIANTS = ("fp32", "cpu", "dynamic", "quant")
FILENAMES = {
    "fp32": "model_fp32.tflite",
    "cpu": "model_cpu.tflite",
    "dynamic": "model_dynamic.tflite",
    "quant": "model_quant.tflite",
}


# TensorFlow has no public switch for per-tensor INT8 weights; this private attribute is the only one we
# set. tests/test_convert.py::test_tensorflow_per_tensor_switch_exists pins it.
PER_TENSOR_ATTR = "_experimental_disable_per_channel"


def disable_per_channel(converter: object) -> None:
    """Per-tensor INT8 weights; fails loudly if TensorFlow dropped the switch (setting it would do nothing)."""
    if not hasattr(converter, PER_TENSOR_ATTR):
        raise RuntimeError(f"this TensorFlow's TFLiteConverter has no {PER_TENSOR_ATTR}: per-tensor is unavailable")
    setattr(converter, PER_TENSOR_ATTR, True)


def _say(msg: str) -> None:
    print(msg, flush=True)


@contextlib.contextmanager
def _fd_redirect(path: Path) -> Iterator[None]:
    """Send fd 1 and 2 (including C++ and tqdm output) to a log file for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def onnx_to_saved_model(onnx_path: Path, work: Path) -> Path:
    import onnx2tf

    sm = work / "saved_model"
    # onnx2tf 2.x lowers ONNX straight to a flatbuffer IR (no TRANSPOSE pairs around our concats)
    # and, with flatbuffer_direct_output_saved_model (-fdosm, needs tf_keras), writes a SavedModel.
    # We never ask it to quantize: it would calibrate on its bundled noise sample.
    with _fd_redirect(work / "onnx2tf.log"):
        onnx2tf.convert(
            input_onnx_file_path=str(onnx_path),
            output_folder_path=str(sm),
            flatbuffer_direct_output_saved_model=True,
            non_verbose=True,
        )
    if not (sm / "saved_model.pb").is_file():
        raise RuntimeError(f"onnx2tf wrote no SavedModel; see {work / 'onnx2tf.log'}")
    return sm


def convert_variants(
    saved_model: Path,
    calib: np.ndarray,
    out: Path,
    variants: tuple[str, ...] = VARIANTS,
    per_tensor: bool = False,
    log: Path | None = None,
) -> dict[str, Path]:
    import tensorflow as tf

    def converter() -> tf.lite.TFLiteConverter:
        return tf.lite.TFLiteConverter.from_saved_model(str(saved_model))

    def representative() -> Iterator[list[np.ndarray]]:
        for x in calib:
            # Same scaling as agent.inference.preprocess.to_input for float models.
            yield [(x[None].astype(np.float32) / 255.0)]

    written: dict[str, Path] = {}
    for v in variants:
        t0 = time.perf_counter()
        c = converter()
        if v == "cpu":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.target_spec.supported_types = [tf.float16]
        elif v == "dynamic":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
        elif v == "quant":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = representative
            c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            c.inference_input_type = tf.uint8
            c.inference_output_type = tf.uint8
            if per_tensor:
                disable_per_channel(c)
        ctx = _fd_redirect(log) if log else contextlib.nullcontext()
        with ctx:
            data = c.convert()
        path = out / FILENAMES[v]
        path.write_bytes(data)
        written[v] = path
        _say(f"STAGE {v} {time.perf_counter() - t0:.1f} {path.stat().st_size}")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m builder.quantize.tf_convert", description=__doc__)
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--calib", type=Path, required=True, help="(N, H, W, 3) uint8 RGB letterboxed canvases (.npy), the calibration set")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: --out)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--per-tensor", action="store_true", help="per-tensor INT8 weights (default per-channel)")
    args = ap.parse_args(argv)
    work = args.work or args.out
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}")
    calib = np.load(args.calib)
    if calib.ndim != 4 or calib.shape[-1] != 3 or calib.dtype != np.uint8 or len(calib) == 0:
        ap.error(f"--calib must be (N, H, W, 3) uint8 with N >= 1, got {calib.shape} {calib.dtype}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    sm = onnx_to_saved_model(args.onnx, work)
    _say(f"STAGE saved_model {time.perf_counter() - t0:.1f} 0")
    convert_variants(sm, calib, args.out, variants, args.per_tensor, log=work / "tflite_converter.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
