"""edge-builder compile: adding an Edge TPU model to a signed bundle, through the real CLI.

Bundles are built around Google's real Coral models (tests/data/coral, Apache-2.0): the CPU model as
model_quant.tflite, and its real compiled twin (made by Google with edgetpu_compiler) as the file to
attach. No compiler output is faked: the compile-here path is only tested for its refusal without a
compiler, which is the situation on every non-x86-64 host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from agent.inference.tflite import Interpreter, tensor_info
from agent.protocol.manifest import Manifest, ModelFiles, OutputLayout, TensorSpec
from agent.security.bundle import Bundle, file_entry, write_manifest
from agent.security.signing import Keyring, SigningKey

ROOT = Path(__file__).resolve().parents[1]
MOBILENET = "mobilenet_v1_0.25_128_quant"
MOVENET = "movenet_single_pose_lightning_ptq"


def _spec(detail: dict) -> TensorSpec:
    t = tensor_info(detail)
    return TensorSpec(name=t.name, shape=list(t.shape), dtype=t.dtype.name,  # type: ignore[arg-type]
                      scale=t.scale if t.quantized else None, zero_point=t.zero_point if t.quantized else None)


def make_bundle(root: Path, model: Path, key: SigningKey | None) -> Path:
    """A bundle with `model` as model_quant.tflite, its I/O read from the model, signed with `key`."""
    root.mkdir(parents=True)
    shutil.copyfile(model, root / "model_quant.tflite")
    interp = Interpreter(model_path=str(root / "model_quant.tflite"))
    (root / "labels.txt").write_text("thing\n")
    manifest = Manifest(
        name=model.stem.replace("_quant", ""), version=3, created=datetime.now(UTC),
        files=[file_entry(root, "model_quant.tflite"), file_entry(root, "labels.txt")],
        models=ModelFiles(cpu="model_quant.tflite"),
        input=_spec(interp.get_input_details()[0]),
        outputs=[_spec(d) for d in interp.get_output_details()],
        class_names=["thing"],
        layout=OutputLayout(decoder="ssd_postprocess", num_classes=1),
    )
    write_manifest(root, manifest, key)
    return root


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    private = tmp_path / "keys" / "fleet.key"
    private.parent.mkdir()
    return private, SigningKey.generate().save(private)


@pytest.fixture
def bundle(tmp_path: Path, coral_data: Path, key_files: tuple[Path, Path]) -> Path:
    return make_bundle(tmp_path / "bundle", coral_data / f"{MOBILENET}.tflite", SigningKey.load(key_files[0]))


def compile_cli(*args: str | Path, path_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path_env is not None:
        env["PATH"] = path_env
    return subprocess.run([sys.executable, "-m", "builder.cli", "compile", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def node_keyring(pub: Path) -> Keyring:
    ring = Keyring()
    ring.add_pem(pub.read_bytes(), str(pub))
    return ring


def test_attach_real_compiled_twin_and_node_verifies(bundle: Path, coral_data: Path,
                                                      key_files: tuple[Path, Path]) -> None:
    twin = coral_data / f"{MOBILENET}_edgetpu.tflite"
    res = compile_cli(bundle, "--attach", twin, "--key", key_files[0])
    assert res.returncode == 0, res.stderr
    assert "1 edgetpu-custom-op, 0 on the CPU" in res.stdout
    loaded = Bundle.load(bundle, node_keyring(key_files[1]))  # signature and every sha256, as a node does
    assert loaded.manifest.models.edgetpu == "model_edgetpu.tflite"
    assert loaded.manifest.models.cpu == "model_quant.tflite"
    assert (bundle / "model_edgetpu.tflite").read_bytes() == twin.read_bytes()
    assert {f.path for f in loaded.manifest.files} == {"model_quant.tflite", "labels.txt", "model_edgetpu.tflite"}
    assert loaded.manifest.version == 3
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".bundle.edit-")]  # no scratch left


def test_attach_again_replaces_the_edgetpu_model(bundle: Path, coral_data: Path, key_files: tuple[Path, Path]) -> None:
    twin = coral_data / f"{MOBILENET}_edgetpu.tflite"
    for _ in range(2):
        res = compile_cli(bundle, "--attach", twin, "--key", key_files[0])
        assert res.returncode == 0, res.stderr
    files = [f.path for f in Bundle.load(bundle, node_keyring(key_files[1])).manifest.files]
    assert files.count("model_edgetpu.tflite") == 1


def test_attach_compiled_model_of_another_network_is_refused(bundle: Path, coral_data: Path,
                                                             key_files: tuple[Path, Path]) -> None:
    before = snapshot(bundle)
    res = compile_cli(bundle, "--attach", coral_data / "tools_split_concat_edgetpu.tflite", "--key", key_files[0])
    assert res.returncode == 1
    assert "is not a compiled model_quant.tflite" in res.stderr
    assert "3 inputs ['input1', 'inputs/rnn1', 'inputs/rnn2'], the INT8 model has 1 ['input']" in res.stderr
    assert snapshot(bundle) == before


def test_attach_cpu_model_is_refused(bundle: Path, coral_data: Path, key_files: tuple[Path, Path]) -> None:
    before = snapshot(bundle)
    res = compile_cli(bundle, "--attach", bundle / "model_quant.tflite", "--key", key_files[0])
    assert res.returncode == 1
    assert "not compiled for the Edge TPU: no 'edgetpu-custom-op' op" in res.stderr
    assert snapshot(bundle) == before


def test_partially_compiled_needs_allow_partial(tmp_path: Path, coral_data: Path,
                                                key_files: tuple[Path, Path]) -> None:
    root = make_bundle(tmp_path / "pose", coral_data / f"{MOVENET}.tflite", SigningKey.load(key_files[0]))
    twin = coral_data / f"{MOVENET}_edgetpu.tflite"
    before = snapshot(root)
    res = compile_cli(root, "--attach", twin, "--key", key_files[0])
    assert res.returncode == 1
    assert "would run on the CPU" in res.stderr and "GATHER_ND" in res.stderr and "--allow-partial" in res.stderr
    assert snapshot(root) == before
    res = compile_cli(root, "--attach", twin, "--key", key_files[0], "--allow-partial")
    assert res.returncode == 0, res.stderr
    assert Bundle.load(root, node_keyring(key_files[1])).manifest.models.edgetpu == "model_edgetpu.tflite"


def test_io_quantization_difference_is_named(tmp_path: Path, coral_data: Path) -> None:
    from builder.edgetpu.attach import tensor_differences

    ref = [{"name": "input", "shape": [1, 128, 128, 3], "dtype": "uint8", "scale": 0.0078125, "zero_point": 128}]
    new = [{**ref[0], "scale": 0.00390625, "zero_point": 0}]
    assert tensor_differences("input", ref, new) == [
        "input #0 'input': scale 0.00390625, the INT8 model has 0.0078125",
        "input #0 'input': zero point 0, the INT8 model has 128",
    ]


def test_tampered_bundle_is_not_resigned(bundle: Path, coral_data: Path, key_files: tuple[Path, Path]) -> None:
    model = bundle / "model_quant.tflite"
    raw = bytearray(model.read_bytes())
    raw[-100] ^= 0xFF
    model.write_bytes(bytes(raw))
    before = snapshot(bundle)
    res = compile_cli(bundle, "--attach", coral_data / f"{MOBILENET}_edgetpu.tflite", "--key", key_files[0])
    assert res.returncode == 1
    assert "model_quant.tflite: sha256" in res.stderr and "refusing to re-sign" in res.stderr
    assert snapshot(bundle) == before


def test_other_key_or_no_key_is_refused(bundle: Path, coral_data: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    SigningKey.generate().save(other)
    twin = coral_data / f"{MOBILENET}_edgetpu.tflite"
    before = snapshot(bundle)
    res = compile_cli(bundle, "--attach", twin, "--key", other)
    assert res.returncode == 1 and "refusing to re-sign what another key vouched for" in res.stderr
    res = compile_cli(bundle, "--attach", twin)
    assert res.returncode == 1 and "is signed: give --key" in res.stderr
    assert snapshot(bundle) == before


def test_unsigned_bundle_gets_signed(tmp_path: Path, coral_data: Path, key_files: tuple[Path, Path]) -> None:
    root = make_bundle(tmp_path / "plain", coral_data / f"{MOBILENET}.tflite", None)
    res = compile_cli(root, "--attach", coral_data / f"{MOBILENET}_edgetpu.tflite", "--key", key_files[0])
    assert res.returncode == 0, res.stderr
    assert Bundle.load(root, node_keyring(key_files[1])).manifest.models.edgetpu == "model_edgetpu.tflite"


def test_no_compiler_prints_the_command_to_run_elsewhere(bundle: Path, tmp_path: Path,
                                                         key_files: tuple[Path, Path]) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    before = snapshot(bundle)
    res = compile_cli(bundle, "--key", key_files[0], path_env=str(empty))
    assert res.returncode == 3
    assert "edgetpu_compiler is not on PATH" in res.stderr and "x86-64 Linux" in res.stderr
    assert "  edgetpu_compiler -s -t 600 -o . model_quant.tflite\n" in res.stderr
    assert f"edge-builder compile {bundle} --attach model_quant_edgetpu.tflite --key KEY" in res.stderr
    assert "docs/EDGETPU_COMPILE.md" in res.stderr
    assert snapshot(bundle) == before


def test_compiler_path_must_be_executable(bundle: Path, tmp_path: Path, key_files: tuple[Path, Path]) -> None:
    missing = tmp_path / "nowhere" / "edgetpu_compiler"
    res = compile_cli(bundle, "--key", key_files[0], "--compiler", missing)
    assert res.returncode == 3 and f"--compiler {missing}: not an executable file" in res.stderr


def test_bundle_model_inputs_read_without_allocation(coral_data: Path) -> None:
    """The compiled model's tensors are read from an Interpreter that is never allocated (no delegate here)."""
    interp = Interpreter(model_path=str(coral_data / f"{MOBILENET}_edgetpu.tflite"))
    d = interp.get_input_details()[0]
    assert d["name"] == "input" and list(d["shape"]) == [1, 128, 128, 3] and d["dtype"] == np.uint8


def test_version_bump_for_republishing(bundle: Path, coral_data: Path, key_files: tuple[Path, Path]) -> None:
    twin = coral_data / f"{MOBILENET}_edgetpu.tflite"
    before = snapshot(bundle)
    res = compile_cli(bundle, "--attach", twin, "--key", key_files[0], "--version", "3")
    assert res.returncode == 1 and "--version 3 is not above the bundle's version 3" in res.stderr
    assert snapshot(bundle) == before
    res = compile_cli(bundle, "--attach", twin, "--key", key_files[0], "--version", "4")
    assert res.returncode == 0, res.stderr
    assert "v4" in res.stdout
    assert Bundle.load(bundle, node_keyring(key_files[1])).manifest.version == 4


def test_failing_compiler_leaves_the_bundle_unchanged(bundle: Path, key_files: tuple[Path, Path]) -> None:
    """--compiler names any executable (linked in as edgetpu_compiler); one that fails (`false`, no output) is
    reported with its exit status and nothing is added."""
    false = shutil.which("false")
    assert false is not None
    before = snapshot(bundle)
    res = compile_cli(bundle, "--key", key_files[0], "--compiler", false)
    assert res.returncode == 1
    assert "edgetpu_compiler failed (exit 1)" in res.stderr
    assert snapshot(bundle) == before


def test_missing_attach_file(bundle: Path, tmp_path: Path, key_files: tuple[Path, Path]) -> None:
    res = compile_cli(bundle, "--attach", tmp_path / "nope_edgetpu.tflite", "--key", key_files[0])
    assert res.returncode == 1 and "nope_edgetpu.tflite: no such file" in res.stderr


def test_attach_to_a_schema_2_bundle_gives_tpu_nodes_their_file_list(bundle: Path, coral_data: Path,
                                                                     key_files: tuple[Path, Path]) -> None:
    from agent.protocol.manifest import with_schema

    write_manifest(bundle, with_schema(Bundle.load(bundle).manifest, 2), SigningKey.load(key_files[0]))
    res = compile_cli(bundle, "--attach", coral_data / f"{MOBILENET}_edgetpu.tflite", "--key", key_files[0])
    assert res.returncode == 0, res.stderr
    m = Bundle.load(bundle, node_keyring(key_files[1]), complete=True).manifest
    assert m.schema_version == 2 and m.needs is not None
    assert m.needs["edgetpu"] == ["model_edgetpu.tflite", "model_quant.tflite"]  # its model + the CPU fallback
    assert m.needs["cpu"] == ["model_quant.tflite"]  # CPU nodes still skip the TPU model
