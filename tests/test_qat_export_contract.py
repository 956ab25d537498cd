"""Contract with onnx2tf: a quantization-aware-trained (QDQ) ONNX does not reach an INT8 TFLite with its learned
ranges (docs/CONVERSION.md, "QAT"). Why `edge-builder train --qat` does not exist yet, pinned as a test: when
one of these fails, onnx2tf has changed how it treats QuantizeLinear/DequantizeLinear and QAT export should be
looked at again.

The model is the smallest QAT pattern: input QDQ, a convolution whose int8 weights come through DequantizeLinear
(per output channel), ReLU, and an activation QDQ whose range ([0, 2]) a QAT run would have learned. Built with
onnx.helper (no torch), converted in child processes (TensorFlow stays out of the test process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2tf")

from builder.edgetpu.flatbuffer import read_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEARNED_RANGE = 2.0  # the activation range "learned" in training: scale 2/255


def _qdq_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "in_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "u8_zero"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(8, 0.004, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w_zero"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array(LEARNED_RANGE / 255, np.float32), "act_scale"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "in_scale", "u8_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "in_scale", "u8_zero"], ["x"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("Conv", ["x", "w", "bias"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "act_scale", "u8_zero"], ["r_q"]),
        helper.make_node("DequantizeLinear", ["r_q", "act_scale", "u8_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "qat_pattern",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _child(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_onnx2tf_turns_qdq_into_float_arithmetic(tmp_path: Path) -> None:
    """onnx2tf's own TFLite output keeps the learned scales only as float rounding arithmetic around float
    convolutions: nothing in it is an INT8 model the Edge TPU compiler could take."""
    src = _qdq_onnx(tmp_path / "qdq.onnx")
    r = _child(f"import onnx2tf\nonnx2tf.convert(input_onnx_file_path={str(src)!r}, "
               f"output_folder_path={str(tmp_path / 'direct')!r}, non_verbose=True)\n", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    fb = read_model(tmp_path / "direct" / "qdq_float32.tflite")
    ops = [op.op for op in fb.ops]
    assert {"ROUND", "DEQUANTIZE"} <= set(ops), ops  # QuantizeLinear became divide/round/clamp/cast
    convs = [op for op in fb.ops if op.op == "CONV_2D"]
    assert convs and all(fb.tensors[op.inputs[1]].dtype == "float32" for op in convs)  # float weights


def test_our_conversion_refuses_a_qdq_model(tmp_path: Path) -> None:
    """The converter `edge-builder convert` runs (onnx2tf -> SavedModel -> TFLiteConverter INT8) stops at the
    SavedModel step: onnx2tf's SavedModel exporter has no ROUND."""
    src = _qdq_onnx(tmp_path / "qdq.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run(
        [sys.executable, "-m", "builder.quantize.tf_convert", "--onnx", str(src), "--calib",
         str(tmp_path / "calib.npy"), "--out", str(tmp_path / "out"), "--variants", "quant"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    assert r.returncode != 0
    log = (tmp_path / "out" / "onnx2tf.log").read_text(errors="replace") if (tmp_path / "out" / "onnx2tf.log").exists() else ""
    assert "ROUND" in r.stderr + log, (r.stderr[-2000:], log[-2000:])
    assert not (tmp_path / "out" / "model_quant.tflite").exists()
