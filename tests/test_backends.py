"""Backends: Edge TPU enumeration on a fake sysfs/dev tree in the kernel's format, device selection,
real TFLite on the CPU with Google's Coral test models, and clear errors where a TPU cannot run.

Fake tree format (what the kernel exposes, and what libedgetpu/pycoral read):
  /sys/bus/usb/devices/<bus>-<port>/idVendor   "1a6e\n" (Global Unichip, before firmware load) or "18d1\n"
  /sys/bus/usb/devices/<bus>-<port>/idProduct  "089a\n"                                      or "9302\n"
  /dev/apex_<N>                                 character device of the gasket/apex PCIe driver
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import AgentConfig, CpuConfig, EdgeTpuConfig, load_config
from agent.inference import tflite
from agent.inference.backends import registry
from agent.inference.backends.base import Backend, BackendError, BackendSettings, TensorInfo
from agent.inference.backends.cpu import CpuBackend
from agent.inference.backends.edgetpu import EdgeTpuBackend, enumerate_tpus, select_device
from agent.inference.decode.yolo_nas import dequantize
from agent.inference.preprocess import letterbox


def _usb(root: Path, port: str, vid: str, pid: str, extra: dict[str, str] | None = None) -> None:
    d = root / "bus" / "usb" / "devices" / port
    d.mkdir(parents=True)
    (d / "idVendor").write_text(vid + "\n")
    (d / "idProduct").write_text(pid + "\n")
    for k, v in (extra or {}).items():
        (d / k).write_text(v + "\n")


@pytest.fixture
def fake_host(tmp_path: Path) -> tuple[Path, Path]:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    _usb(sysfs, "1-1", "1d6b", "0002", {"product": "xHCI Host Controller"})  # a root hub: not a TPU
    _usb(sysfs, "2-1", "18d1", "9302", {"manufacturer": "Google Inc."})  # Coral USB, firmware loaded
    _usb(sysfs, "2-10", "1a6e", "089a")  # Coral USB before its firmware was loaded
    _usb(sysfs, "2-2", "046d", "0825")  # a webcam
    (sysfs / "bus" / "usb" / "devices" / "usb1").mkdir()  # root hub entries lack some files
    (dev / "apex_0").touch()
    (dev / "apex_1").touch()
    return sysfs, dev


def test_enumerate_finds_pci_and_usb_tpus_only(fake_host: tuple[Path, Path]) -> None:
    sysfs, dev = fake_host
    found = enumerate_tpus(sysfs, dev)
    assert [d.spec for d in found] == ["pci:0", "pci:1", "usb:0", "usb:1"]
    usb = [d for d in found if d.kind == "usb"]
    assert [Path(d.path).name for d in usb] == ["2-1", "2-10"]  # natural order, webcam and hub ignored
    assert [d.detail for d in usb] == ["ready", "unprogrammed"]


def test_enumerate_empty_host(tmp_path: Path) -> None:
    assert enumerate_tpus(tmp_path / "nosys", tmp_path / "nodev") == []


def test_select_device(fake_host: tuple[Path, Path]) -> None:
    found = enumerate_tpus(*fake_host)
    assert select_device("", found).spec == "pci:0"
    assert select_device("usb", found).spec == "usb:0"
    assert select_device("usb:1", found).spec == "usb:1"
    assert select_device("pci:1", found).spec == "pci:1"
    with pytest.raises(BackendError, match="usb:2 not found"):
        select_device("usb:2", found)
    with pytest.raises(BackendError, match="no Edge TPU found"):
        select_device("usb", [])
    only_usb = [d for d in found if d.kind == "usb"]
    with pytest.raises(BackendError, match="no pci Edge TPU"):
        select_device("pci", only_usb)


def test_edgetpu_config_rejects_bad_device() -> None:
    with pytest.raises(ValueError, match="usb, usb:N, pci or pci:N"):
        EdgeTpuConfig(device="tpu0")
    assert EdgeTpuConfig(device="pci:3").device == "pci:3"


def test_cpu_backend_classifies_with_google_model(coral_data: Path) -> None:
    """Real interpreter, XNNPACK, 2 threads; letterbox written straight into the input tensor."""
    b = CpuBackend.open(coral_data / "mobilenet_v2_1.0_224_quant.tflite", CpuConfig(threads=2))
    labels = (coral_data / "imagenet_labels.txt").read_text().splitlines()
    assert b.name == "cpu" and b.device == "cpu:2t"
    assert b.input.dtype == np.uint8 and b.input.shape == (1, 224, 224, 3)
    assert b.input.quantized and b.input.scale > 0  # read from the tensor
    img = cv2.imread(str(coral_data / "parrot.jpg"))
    b.fill_input(lambda buf: letterbox(img, 224, out=buf)[1])
    b.invoke()
    (scores,) = b.get_outputs()
    top = int(np.argmax(scores))
    assert "macaw" in labels[top].lower() or "lorikeet" in labels[top].lower(), labels[top]


def test_cpu_backend_without_xnnpack_gives_same_result(coral_data: Path) -> None:
    model = coral_data / "mobilenet_v1_0.25_128_quant.tflite"
    x = np.random.default_rng(0).integers(0, 255, (1, 128, 128, 3), dtype=np.uint8)
    a = CpuBackend.open(model, CpuConfig(threads=1)).run(x)[0]
    plain = CpuBackend.open(model, CpuConfig(threads=1, xnnpack=False))
    assert plain.device == "cpu:1t:noxnn"
    b = plain.run(x)[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_cpu_backend_refuses_edgetpu_file(coral_data: Path) -> None:
    with pytest.raises(BackendError, match="edgetpu-custom-op"):
        CpuBackend.open(coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")


def test_cpu_backend_refuses_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(BackendError, match="cannot load bad.tflite"):
        CpuBackend.open(bad)


def test_edgetpu_backend_without_tpu(coral_data: Path, tmp_path: Path) -> None:
    cfg = EdgeTpuConfig(sysfs_root=tmp_path / "sys", dev_root=tmp_path / "dev")
    with pytest.raises(BackendError, match="no Edge TPU found"):
        EdgeTpuBackend.open(coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", cfg)


# ai-edge-litert's Delegate.__del__ raises AttributeError after a failed load_delegate (its own bug).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_edgetpu_backend_delegate_failure_is_a_clear_error(coral_data: Path, fake_host: tuple[Path, Path]) -> None:
    """A TPU is present (fake sysfs) but libedgetpu is not installed here (or cannot open the device):
    the real load_delegate fails and the backend says why."""
    sysfs, dev = fake_host
    cfg = EdgeTpuConfig(device="usb:0", sysfs_root=sysfs, dev_root=dev)
    with pytest.raises(BackendError, match="Edge TPU usb:0 unusable"):
        EdgeTpuBackend.open(coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", cfg)
    with pytest.raises(BackendError, match="disabled"):
        EdgeTpuBackend.open(coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", EdgeTpuConfig(enabled=False))


def test_tensor_info_quantization_feeds_dequantize() -> None:
    t = TensorInfo(0, "x", (1, 4), np.dtype(np.int8), scale=0.5, zero_point=-3)
    np.testing.assert_allclose(dequantize(np.array([-3, -1, 5], np.int8), t.quant), [0.0, 1.0, 4.0])
    f = TensorInfo(0, "y", (1,), np.dtype(np.float32))
    assert not f.quantized and f.quant is None


def test_one_quantization_reader_for_both_detail_forms() -> None:
    """ai-edge-litert fills both fields; the per-tensor `quantization_parameters` wins, the legacy tuple
    is the fallback, and a float tensor has none."""
    new = {"index": 3, "name": "out", "shape": np.array([1, 8]), "dtype": np.uint8, "quantization": (0.0, 0),
           "quantization_parameters": {"scales": np.array([0.25], np.float32), "zero_points": np.array([7])}}
    legacy = {"index": 4, "name": "in", "shape": [1, 2], "dtype": np.int8, "quantization": (0.5, -3)}
    flt = {"index": 5, "name": "f", "shape": [1], "dtype": np.float32, "quantization": (0.0, 0),
           "quantization_parameters": {"scales": np.array([], np.float32), "zero_points": np.array([])}}
    assert tflite.quant_params(new) == (0.25, 7) and tflite.quant_params(legacy) == (0.5, -3)
    assert tflite.quant_params(flt) is None
    t = tflite.tensor_info(new)
    assert (t.index, t.name, t.shape, t.dtype, t.quant) == (3, "out", (1, 8), np.dtype(np.uint8), (0.25, 7))
    assert tflite.tensor_info(flt).quant is None


def test_load_interpreter_and_run(coral_data: Path) -> None:
    """The public loader the builder uses: allocated interpreter, tensors described, one inference."""
    interp = tflite.load_interpreter(coral_data / "mobilenet_v1_0.25_128_quant.tflite", threads=1)
    (inp,) = tflite.input_tensors(interp)
    assert inp.shape == (1, 128, 128, 3) and inp.quant is not None
    x = np.zeros(inp.shape, np.uint8)
    (out,) = tflite.run(interp, x)
    assert out.shape == tflite.output_tensors(interp)[0].shape
    b = CpuBackend.open(coral_data / "mobilenet_v1_0.25_128_quant.tflite", CpuConfig(threads=1))
    np.testing.assert_array_equal(b.run(x)[0], out)


# ------------------------------------------------------------------------------------------ registry, config


def test_registry_knows_each_backend_by_its_config_type() -> None:
    assert {"edgetpu": EdgeTpuBackend, "cpu": CpuBackend} == registry.BACKENDS
    assert registry.FALLBACK == "cpu"
    assert isinstance(registry.default_settings("edgetpu"), EdgeTpuConfig)
    assert isinstance(registry.default_settings("cpu"), CpuConfig)
    with pytest.raises(BackendError, match="unknown backend type 'hailo'"):
        registry.backend_class("hailo")


def test_backend_config_detectors_by_type(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("""
[backend]
prefer = "edgetpu"
[backend.detectors.coral]
type = "edgetpu"
device = "usb:1"
reprobe_interval_s = 5.0
[backend.detectors.cpu]
threads = 3
""")
    b = load_config(tmp_path / "a.toml").backend
    assert b.edgetpu.device == "usb:1" and b.cpu.threads == 3  # `type` defaults to the section's name
    assert b.preferred() is b.settings("edgetpu") and b.edgetpu.reprobe_interval_s == 5.0
    only_cpu = AgentConfig(backend={"detectors": {"cpu": {"threads": 1}}}).backend
    assert only_cpu.edgetpu == EdgeTpuConfig()  # a type without a section runs with its defaults
    assert AgentConfig(backend={"prefer": "cpu"}).backend.preferred() is None
    assert AgentConfig(backend={"detectors": {"tpu": {"type": "edgetpu", "enabled": False}}}).backend.preferred() is None
    with pytest.raises(ValueError, match="both of type 'cpu'"):
        AgentConfig(backend={"detectors": {"a": {"type": "cpu"}, "b": {"type": "cpu"}}})
    with pytest.raises(ValueError, match="prefer must be one of edgetpu, cpu"):
        AgentConfig(backend={"prefer": "gpu"})


def test_old_flat_backend_config_still_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "old.toml").write_text("""
[backend]
prefer = "edgetpu"
[backend.edgetpu]
device = "pci:0"
reprobe_interval_s = 7.0
[backend.cpu]
threads = 4
xnnpack = false
""")
    with caplog.at_level("WARNING", logger="agent.config"):
        b = load_config(tmp_path / "old.toml").backend
    assert "[backend.edgetpu], [backend.cpu] is deprecated" in caplog.text
    assert b.edgetpu == EdgeTpuConfig(device="pci:0", reprobe_interval_s=7.0)
    assert b.cpu == CpuConfig(threads=4, xnnpack=False)
    assert sorted(d.type for d in b.detectors.values()) == ["cpu", "edgetpu"]
    assert "cpu" not in b.model_dump() and "edgetpu" not in b.model_dump()  # folded into detectors


def test_old_env_override_lands_on_the_new_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "new.toml").write_text('[backend.detectors.coral]\ntype = "edgetpu"\ndevice = "usb:1"\n')
    monkeypatch.setenv("EDGE_AGENT_BACKEND__EDGETPU__ENABLED", "false")
    monkeypatch.setenv("EDGE_AGENT_BACKEND__CPU__THREADS", "3")
    b = load_config(tmp_path / "new.toml").backend
    assert sorted(b.detectors) == ["coral", "cpu"]
    assert b.edgetpu.device == "usb:1" and not b.edgetpu.enabled and b.cpu.threads == 3
    assert b.preferred() is None


class EchoBackend(Backend):
    """The least a new backend implements: a pure-numpy 'model' whose output is its input plus one."""

    name = "echo"
    label = "Echo"
    model = "cpu"

    def __init__(self) -> None:
        super().__init__("echo:0", "echo.bin")
        self._x = np.zeros((1, 2, 2, 3), np.uint8)
        self._y = self._x

    @classmethod
    def open(cls, model_path: Path | str, cfg: BackendSettings | None = None) -> EchoBackend:
        return cls()

    @property
    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(0, "x", (1, 2, 2, 3), np.dtype(np.uint8))]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo(1, "y", (1, 2, 2, 3), np.dtype(np.uint8))]

    def set_input(self, arr: np.ndarray) -> None:
        self._x = arr.reshape(self.input.shape).astype(self.input.dtype)

    def invoke(self) -> None:
        self._y = self._x + 1

    def get_outputs(self) -> list[np.ndarray]:
        return [self._y.copy()]

    def close(self) -> None:
        pass


def test_backend_interface_defaults_fill_input_and_run() -> None:
    b = EchoBackend.open("echo.bin")

    def fill(buf: np.ndarray) -> str:
        buf[...] = 4
        return "filled"

    assert b.fill_input(fill) == "filled"  # a buffer of the input's shape, then set_input()
    b.invoke()
    assert (b.get_outputs()[0] == 5).all()
    assert (b.run(np.full((2, 2, 3), 9, np.uint8))[0] == 10).all()
    assert repr(b) == "<EchoBackend echo:0 echo.bin>"
