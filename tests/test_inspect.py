"""builder.edgetpu.tflite_inspect / `edge-builder inspect` on Google's real Coral models and our own INT8 model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flatbuffers")
from builder.edgetpu.tflite_inspect import InspectError, inspect_model, readiness  # noqa: E402


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder.cli", "inspect", *args], capture_output=True, text=True)


def test_one_op_edgetpu_model(coral_data: Path) -> None:
    info = inspect_model(coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert info["edgetpu_compiled"] and info["tpu_ops"] == 1 and info["cpu_ops"] == []
    assert info["op_counts"] == {"edgetpu-custom-op": 1}
    assert info["inputs"][0]["dtype"] == "uint8" and info["inputs"][0]["zero_point"] == 128


def test_tpu_plus_cpu_model_and_the_predicted_split(coral_data: Path) -> None:
    compiled = inspect_model(coral_data / "movenet_single_pose_lightning_ptq_edgetpu.tflite")
    assert compiled["edgetpu_compiled"] and compiled["tpu_ops"] == 1
    cpu_ops = compiled["cpu_ops"]
    assert cpu_ops and "ARG_MAX" in cpu_ops and "edgetpu-custom-op" not in cpu_ops
    # The same model before compilation: the static readiness predicts one partition with CPU ops
    # around it, and every op type the compiler left on the CPU is among the predicted CPU ops.
    ready = readiness(coral_data / "movenet_single_pose_lightning_ptq.tflite")
    assert 0 < ready["tpu_ops"] < ready["ops_total"]
    predicted_cpu = {r["op"] for r in ready["ops"] if r["predicted"] == "cpu"}
    assert set(cpu_ops) - {"QUANTIZE", "DEQUANTIZE"} <= predicted_cpu | {"RESHAPE", "MUL", "SUB", "ADD", "CONCATENATION", "PACK", "UNPACK"}
    assert "ARG_MAX" in ready["unsupported_ops"]


def test_cli_json_and_text(coral_data: Path) -> None:
    r = _cli(str(coral_data / "movenet_single_pose_lightning_ptq_edgetpu.tflite"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "edgetpu" and out["tpu_ops"] == 1 and len(out["cpu_ops"]) > 0
    r = _cli(str(coral_data / "movenet_single_pose_lightning_ptq.tflite"), "--json")
    ready = json.loads(r.stdout)["readiness"]
    assert ready["cpu_ops"] == 59 and len(ready["cpu_decisions"]) == 59
    assert ready["cpu_decisions"][2] == {"index": 89, "op": "ARG_MAX", "placement": "cpu", "rule": "supported-op",
                                         "detail": "ARG_MAX is not in the supported-operations table",
                                         "source": "coral.ai/docs/edgetpu/models-intro (Supported operations)"}
    r = _cli(str(coral_data / "movenet_single_pose_lightning_ptq.tflite"))
    assert "#89   ARG_MAX" in r.stdout and "rule single-cut: " in r.stdout
    r = _cli(str(coral_data / "mobilenet_v1_0.25_128_quant.tflite"))
    assert r.returncode == 0 and "CPU model" in r.stdout and "31/31 ops predicted on the Edge TPU" in r.stdout


def test_not_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(InspectError):
        inspect_model(bad)
    r = _cli(str(bad))
    assert r.returncode == 1 and "error:" in r.stderr
