"""builder.convert (pipeline, stages, bundle): the bundle `edge-builder convert` writes, its checks, and bad input.

The heavy checks reuse the session's trained-and-converted bundle (tests/conftest.py `trained_bundle`,
built by tests/fixtures/build_test_bundle.py through builder.convert.pipeline.convert), so no extra conversion
runs for them. Bad-input tests fail before any conversion work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("libreyolo")

from agent.security.bundle import Bundle  # noqa: E402
from agent.security.signing import Keyring  # noqa: E402
from builder.convert.pipeline import ConvertError, convert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AGENT_PY = ROOT / ".venv-agent" / "bin" / "python"


@pytest.fixture(scope="module")
def untrained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from builder.train.checkpoint import CheckpointMeta, build_model, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "output" / "checkpoints" / "demo" / "ckpt_best.pth"
    path.parent.mkdir(parents=True)
    meta = CheckpointMeta(architecture="yolo_nas_s", num_classes=3, class_names=["a", "b", "c"], imgsz=64)
    save_checkpoint(path, build_model("yolo_nas_s", 3).eval(), meta)
    return path


def _images(d: Path, n: int = 3) -> Path:
    import cv2

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(d / f"{i}.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return d


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "builder.cli", "convert", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


# ------------------------------------------------------------------------------------------ bad input


def test_unknown_model_type_and_format(untrained_ckpt: Path, tmp_path: Path) -> None:
    calib = _images(tmp_path / "calib")
    r = _cli("--model_path", str(untrained_ckpt), "--model_type", "yolov8", "--output_formats", "tflite",
             "--calibration_dir", str(calib), "--out", str(tmp_path / "b"))
    assert r.returncode == 1 and "unknown --model_type 'yolov8'" in r.stderr
    with pytest.raises(ConvertError, match="output_formats"):
        convert(untrained_ckpt, calib, tmp_path / "b", output_formats=["onnx"])
    assert not (tmp_path / "b").exists()


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "ckpt_best.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    r = _cli("--model_path", str(bad), "--model_type", "yolo_nas", "--output_formats", "tflite",
             "--calibration_dir", str(_images(tmp_path / "calib")), "--out", str(tmp_path / "b"))
    assert r.returncode == 1 and "error:" in r.stderr and "checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(ConvertError, match="does not exist"):
        convert(tmp_path / "missing.pth", tmp_path / "calib", tmp_path / "b")


@pytest.mark.parametrize("kind", ["empty", "no_images", "missing"])
def test_bad_calibration_dir(untrained_ckpt: Path, tmp_path: Path, kind: str) -> None:
    calib = tmp_path / "calib"
    if kind != "missing":
        calib.mkdir()
    if kind == "no_images":
        (calib / "labels.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    out = tmp_path / "out" / "bundle"
    with pytest.raises(ConvertError, match="no images|does not exist"):
        convert(untrained_ckpt, calib, out)
    # Nothing that looks like a bundle, and no staging leftovers.
    assert not out.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_unwritable_output_dir(untrained_ckpt: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(ConvertError, match="cannot write to output directory"):
        convert(untrained_ckpt, _images(tmp_path / "calib"), blocker / "bundle")
    other = tmp_path / "notabundle"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ConvertError, match="not a bundle"):
        convert(untrained_ckpt, tmp_path / "calib", other)
    assert (other / "precious.txt").read_text() == "keep me"


def test_default_output_and_atomic_install(tmp_path: Path) -> None:
    from builder.convert.output import default_name, default_out_dir, install

    ckpt = Path("output/checkpoints/wildfire_model/ckpt_best.pth")
    assert default_name(ckpt) == "wildfire_model"
    assert default_out_dir(ckpt, "wildfire_model") == Path("output/models/wildfire_model")
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{old}")
    staging = tmp_path / ".bundle.partial-1"
    staging.mkdir()
    (staging / "manifest.json").write_text("{new}")
    install(staging, out)
    assert (out / "manifest.json").read_text() == "{new}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_stages_are_logged_and_timed_from_the_list() -> None:
    from builder.convert.pipeline import STAGES, ConvertOptions, ConvertRun, Stage, run_stages

    logs: list[str] = []
    run = ConvertRun(ConvertOptions(model_path=Path("m.pth"), calibration_dir=Path("c")), None, logs.append)
    seen: list[int] = []
    run_stages(run, [Stage(lambda r: "one", lambda r: seen.append(1)), Stage(lambda r: "two", lambda r: seen.append(2))])
    assert logs == ["[1/2] one", "[2/2] two"] and list(run.timings) == ["one", "two"] and seen == [1, 2]
    assert len(STAGES) == 11


def test_no_import_cycle_through_the_conversion_path() -> None:
    """No module of convert/evaluate/export/quantize/edgetpu or data.calibration can reach itself through
    imports (function-local ones included): convert → evaluate → export, data never back."""
    import ast

    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (ROOT / "builder").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name and mods[d].name != "__init__.py"}
    area = ("builder.convert.", "builder.evaluate.", "builder.export.", "builder.quantize.", "builder.edgetpu.",
            "builder.data.calibration")
    for start in (m for m in graph if m.startswith(area)):
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            m = todo.pop()
            assert m != start, f"{start} imports itself through {sorted(seen)}"
            if m not in seen:
                seen.add(m)
                todo += graph[m]


# ------------------------------------------------------------------------------- the trained bundle


def test_bundle_is_signed_and_complete(trained_bundle: Path, trained_bundle_keys: Path) -> None:
    b = Bundle.load(trained_bundle, Keyring.load(sorted(trained_bundle_keys.glob("*.pub"))))
    m = b.manifest
    assert m.models.cpu == "model_quant.tflite" and m.layout.decoder == "yolo_nas_raw"
    names = {f.path for f in m.files}
    assert {"model_cpu.tflite", "model_dynamic.tflite", "model_quant.tflite", "golden_input.npy",
            "golden_expected.npy", "report.json", "report.md"} <= names
    assert m.input.dtype == "uint8" and m.input.scale == pytest.approx(1 / 255) and m.input.zero_point == 0
    assert len(m.outputs) == 6 and all(o.dtype == "uint8" and o.scale for o in m.outputs)
    assert {"pytorch_fp32", "cpu", "dynamic", "quant"} <= set(m.metrics)
    assert m.metrics["quant"].map50_95 is not None and m.metrics["quant"].latency_ms


def test_int8_model_is_edgetpu_ready(trained_bundle: Path) -> None:
    from builder.edgetpu.tflite_inspect import EDGETPU_OPS, inspect_model, readiness

    info = inspect_model(trained_bundle / "model_quant.tflite")
    assert set(info["op_counts"]) <= EDGETPU_OPS
    assert all(t["dtype"] in ("uint8", "int8", "int32") for op in info["ops"] for t in op["inputs"] + op["outputs"])
    ready = readiness(trained_bundle / "model_quant.tflite", info)
    assert ready["tpu_percent"] == 100.0 and ready["quantized_io"] and ready["float_tensors"] == 0


def test_golden_self_test_reproduces(trained_bundle: Path) -> None:
    from agent.inference.tflite import load_interpreter

    it = load_interpreter(trained_bundle / "model_quant.tflite")
    x = np.load(trained_bundle / "golden_input.npy")
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    got = np.concatenate([it.get_tensor(d["index"]).reshape(-1) for d in it.get_output_details()])
    want = np.load(trained_bundle / "golden_expected.npy")
    assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.skipif(not AGENT_PY.exists(), reason="no .venv-agent (Python 3.11, ai-edge-litert only)")
def test_every_variant_runs_in_the_agent_runtime(trained_bundle: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from agent.inference.tflite import load_interpreter, RUNTIME\n"
        "for f in sys.argv[1:]:\n"
        "    it = load_interpreter(f, threads=1)\n"
        "    d = it.get_input_details()[0]\n"
        "    it.set_tensor(d['index'], np.zeros(d['shape'], d['dtype'])); it.invoke()\n"
        "    assert all(np.isfinite(it.get_tensor(o['index']).astype(float)).all() for o in it.get_output_details())\n"
        "print(RUNTIME, sys.version_info[:2])\n"
    )
    files = [str(trained_bundle / f) for f in ("model_cpu.tflite", "model_dynamic.tflite", "model_quant.tflite")]
    r = subprocess.run([str(AGENT_PY), "-c", code, *files], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ai-edge-litert" in r.stdout


def test_report_measures_every_variant(trained_bundle: Path) -> None:
    rep = json.loads((trained_bundle / "report.json").read_text())
    v = rep["variants"]
    assert set(v) >= {"pytorch_fp32", "fp32", "cpu", "dynamic", "quant"}
    assert rep["parity"]["ok"] and rep["parity"]["max_abs_error"] < 1e-3
    assert rep["ranges"]["ok"]
    # FP16 weights change nothing that matters; FP32 TFLite is the parity-checked latency/size reference.
    assert v["cpu"]["map50_95"] == pytest.approx(v["pytorch_fp32"]["map50_95"], abs=5e-3)
    # The INT8 model is smaller and faster than FP32 TFLite.
    assert v["quant"]["size_bytes"] < 0.3 * v["fp32"]["size_bytes"]
    assert v["quant"]["latency_ms"] < v["fp32"]["latency_ms"]
    assert (trained_bundle / "report.png").exists() and "model_quant" in (trained_bundle / "report.md").read_text()
    # The calibration set (the dataset's training images, labelled) counted by head stride; nothing at 128 px
    # reaches stride 32's 64 px, and the report says so.
    cov = rep["calibration"]["coverage"]
    assert cov["status"] == "missing" and cov["missing"] == [32] and cov["per_stride"]["8"]["objects"] > 0
    assert "stride-32 class outputs are calibrated on background only" in (trained_bundle / "report.md").read_text()
    # The score reference the nodes' drift check reads: model_quant on the validation split, shipped to every node.
    from agent.capture.reference import load_reference

    m = Bundle.load(trained_bundle).manifest
    ref = load_reference(trained_bundle)
    assert m.score_reference == "score_reference.json" and ref is not None and ref.images == v["quant"]["images"]
    assert m.needs is not None and all(m.score_reference in files for files in m.needs.values())


def test_tensorflow_per_tensor_switch_exists() -> None:
    """--per-tensor sets TensorFlow's one private converter attribute we use; pin that it still exists.
    In a child process: TensorFlow must not share a process with libreyolo models."""
    code = (
        "import tensorflow as tf\n"
        "from builder.quantize.tf_convert import PER_TENSOR_ATTR, disable_per_channel\n"
        "f = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec([1, 4], tf.float32)])\n"
        "c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])\n"
        "assert getattr(c, PER_TENSOR_ATTR) is False\n"
        "disable_per_channel(c)\n"
        "assert getattr(c, PER_TENSOR_ATTR) is True\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# ------------------------------------------------------------------------------------ slow, converting


@pytest.mark.slow
def test_noise_calibration_is_caught(trained_bundle_dir: Path, synth_dataset: Path, tmp_path: Path) -> None:
    """The measured failure: calibrating on noise leaves class outputs at zero point 255 (scores capped
    at 0.5) while the FP32 model does fire there on real images. The build must refuse, leaving nothing."""
    import cv2

    ckpts = sorted(trained_bundle_dir.rglob("ckpt_best.pth"))
    if not ckpts:
        pytest.skip("the cached test bundle keeps no checkpoint")
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        cv2.imwrite(str(noise / f"{i}.png"), rng.integers(0, 256, (160, 160, 3), dtype=np.uint8))
    out = tmp_path / "models" / "noisy"
    logs: list[str] = []
    with pytest.raises(ConvertError, match="clipped the class outputs"):
        # The raw head: the sigmoid head's class outputs have a fixed [0, 1] scale that noise cannot cap.
        convert(ckpts[0], noise, out, dataset_path=synth_dataset, class_head="logits", log=logs.append)
    text = "\n".join(logs)
    assert "zero point 255" in text and "error:" in text
    assert not out.exists() and list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_yolo_nas_s_at_320_is_fully_edgetpu_ready(tmp_path: Path) -> None:
    """Acceptance: the readiness report predicts 100% of ops on the Edge TPU for yolo_nas_s at 320."""
    from builder.edgetpu.tflite_inspect import readiness
    from builder.export.onnx_body import export_onnx
    from builder.quantize.launch import run_tf_convert
    from builder.train.checkpoint import build_model

    model = build_model("yolo_nas_s", 3).eval()
    onnx_path = export_onnx(model, 320, tmp_path / "body.onnx")
    calib = np.random.default_rng(0).integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
    np.save(tmp_path / "calib.npy", calib)
    run_tf_convert(onnx_path, tmp_path / "calib.npy", tmp_path, tmp_path, ("quant",), False, lambda m: None)
    ready = readiness(tmp_path / "model_quant.tflite")
    assert ready["tpu_percent"] == 100.0, ready["summary"]
    assert ready["unsupported_ops"] == [] and ready["quantized_io"]
    assert max(_nonunit(s) for r in ready["ops"] for s in r["output_shapes"]) <= 3


def _nonunit(shape: list[int]) -> int:
    return sum(1 for d in shape if d != 1)
