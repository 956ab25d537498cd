"""The static Edge TPU readiness agrees with the real compiler: Google's compiled twins are ground truth.

For every CPU model in tests/data/coral with a `*_edgetpu.tflite` twin (compiled by edgetpu_compiler 16),
the ops `readiness` predicts on the CPU are exactly the twin's ops other than `edgetpu-custom-op`: the
same count and the same op types in the same order. Our own INT8 model stays fully on the Edge TPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("flatbuffers")
from builder.edgetpu import rules  # noqa: E402
from builder.edgetpu.tflite_inspect import inspect_model, readiness  # noqa: E402


def _pairs(coral_data: Path) -> list[tuple[Path, Path]]:
    return [(cpu, cpu.with_name(cpu.stem + "_edgetpu.tflite")) for cpu in sorted(coral_data.glob("*.tflite"))
            if not cpu.stem.endswith("_edgetpu") and cpu.with_name(cpu.stem + "_edgetpu.tflite").is_file()]


def test_the_repo_carries_the_twins(coral_data: Path) -> None:
    names = {cpu.name for cpu, _ in _pairs(coral_data)}
    assert {"movenet_single_pose_lightning_ptq.tflite", "mobilenet_v1_0.25_128_quant.tflite",
            "tools_split_concat.tflite"} <= names


def test_predicted_cpu_ops_equal_every_compiled_twin(coral_data: Path) -> None:
    for cpu, twin in _pairs(coral_data):
        compiled = inspect_model(twin)
        ready = readiness(cpu)
        assert ready["cpu_ops"] == len(compiled["cpu_ops"]), cpu.name
        assert ready["cpu_op_types"] == compiled["cpu_ops"], cpu.name


def test_movenet_split_shows_each_decision_with_its_rule_and_source(coral_data: Path) -> None:
    ready = readiness(coral_data / "movenet_single_pose_lightning_ptq.tflite")
    assert (ready["tpu_ops"], ready["cpu_ops"], ready["first_cpu_op"]) == (98, 59, 89)
    rows = ready["ops"]
    assert [r["placement"] for r in rows[:3]] == ["lead", "lead", "tpu"]  # CAST, QUANTIZE before the partition
    assert rows[89]["op"] == "ARG_MAX" and rows[89]["rule"] == "supported-op"
    # Supported ops that do not depend on the cut still map (the twin's custom op holds them) ...
    assert all(rows[i]["placement"] == "tpu" for i in [*range(100, 105), *range(106, 112)])
    # ... and supported ops fed from the CPU side stay there, by the single-cut rule.
    assert rows[115]["op"] == "ADD" and rows[115]["rule"] == "single-cut"
    for r in rows:
        assert r["source"] and r["rule"]


def test_every_rule_cites_its_source() -> None:
    for rule in [*rules.RULES, rules.CUT_RULE, rules.LEAD_RULE]:
        assert rule.source and rule.text, rule.id


def test_doc_conditions_as_pure_functions() -> None:
    def t(shape: list[int], dtype: str = "int8", const: bool = False, ix: int = 0) -> dict[str, object]:
        return {"index": ix, "dtype": dtype, "shape": shape, "const": const, "dynamic": False}

    def op(name: str, ins: list[dict[str, object]], outs: list[dict[str, object]]) -> dict[str, object]:
        return {"op": name, "custom_code": None, "version": 1, "inputs": ins, "outputs": outs}

    def broken(o: dict[str, object]) -> list[str]:
        return [r.id for r in rules.violations(o)]

    assert broken(op("PAD", [t([1, 8, 8, 3]), t([4, 2], "int32", True)], [t([1, 10, 10, 3])])) == []
    assert broken(op("PAD", [t([1, 8, 8, 3]), t([4, 2], "int32", True)], [t([1, 8, 8, 5])])) == ["pad-xy"]
    assert broken(op("MEAN", [t([1, 8, 8, 3]), t([2], "int32", True)], [t([1, 3])])) == []
    assert broken(op("MEAN", [t([1, 8, 8, 3]), t([1], "int32", True)], [t([1, 8, 8])])) == ["mean-xy"]
    three = [t([1, 4, 4, 2]), t([1, 4, 4, 2]), t([1, 4, 4, 2], const=True)]
    assert broken(op("CONCATENATION", three, [t([1, 4, 4, 6])])) == ["concat-const"]
    assert broken(op("CONCATENATION", three[1:], [t([1, 4, 4, 4])])) == []
    assert broken(op("RESIZE_BILINEAR", [t([2, 4, 4, 2])], [t([2, 8, 8, 2])])) == ["innermost-3-dims"]
    assert broken(op("SOFTMAX", [t([1, 20000])], [t([1, 20000])])) == ["softmax-1d"]
    assert broken(op("ARG_MAX", [t([1, 9])], [t([1], "int32")])) == ["supported-op", "8-bit"]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in rules.EDGETPU_OPS and "LSTM" in rules.EDGETPU_OPS


def test_cut_is_by_dependency_not_position() -> None:
    def op(name: str, src: int, dst: int, dtype: str = "int8") -> dict[str, object]:
        t = {"dtype": dtype, "shape": [1, 4], "const": False, "dynamic": False}
        return {"op": name, "custom_code": None, "version": 1, "inputs": [{**t, "index": src, "dtype": "int8"}],
                "outputs": [{**t, "index": dst}]}

    ops = [op("ADD", 0, 1), op("ARG_MAX", 1, 2, "int32"), op("RESHAPE", 2, 3, "int32"), op("ADD", 1, 4)]
    assert rules.partition(ops) == ["tpu", "cpu", "cpu", "tpu"]


def test_our_model_stays_fully_on_the_edge_tpu(trained_bundle: Path) -> None:
    ready = readiness(trained_bundle / "model_quant.tflite")
    assert ready["cpu_ops"] == 0 and ready["tpu_percent"] == 100.0 and ready["unsupported_ops"] == []
