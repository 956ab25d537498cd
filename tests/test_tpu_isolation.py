"""A libedgetpu that crashes, hangs or fails never takes the daemon down: `edge-agent run` (a real process,
a real Mosquitto) with prefer = "edgetpu", a USB Coral in a fake sysfs and `library` pointing at a fake
libedgetpu (tests/helpers_native.py) probes it in a child, stays up, runs the bundle's CPU model, publishes
`degraded` with the library, its version and the TFLite runtime in the reason, and probes again as soon as
the library file is replaced (not at the next periodic retry, set here far away). In-process: a cleared
library is loaded from the probed file, and nothing is probed while this process holds the TPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for
from helpers_native import build_all
from paho.mqtt.enums import CallbackAPIVersion

from agent.inference import tflite
from agent.inference.backends.base import BackendError
from agent.inference.backends.edgetpu import EdgeTpuBackend, EdgeTpuConfig
from agent.inference.backends.probe import cached_verdict, probe_cached, shipped_model
from agent.protocol.messages import DetectionsMessage, NodeState
from agent.security.bundle import Bundle, file_entry, write_manifest
from agent.security.signing import SigningKey
from builder.data.synth import make_video

ROOT = Path(__file__).resolve().parents[1]
VERSION = "BuildLabel(fake_delegate.c), RuntimeVersion(0)"  # the fake library's edgetpu_version()
STATE, DETS = "iso/node/tpu-1/state", "iso/node/tpu-1/detections"

pytestmark = pytest.mark.skipif(tflite.Interpreter is None, reason="no TFLite runtime")


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("fake-libedgetpu"), ("crash", "hang", "null"))


@pytest.fixture(scope="module")
def tpu_bundle(tmp_path_factory: pytest.TempPathFactory, trained_bundle: Path, trained_bundle_key: Path,
               coral_data: Path) -> Path:
    """The trained bundle plus a compiled Edge TPU model (Google's mobilenet), re-signed."""
    root = tmp_path_factory.mktemp("iso") / "tpu-bundle"
    shutil.copytree(trained_bundle, root)
    shutil.copy(coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", root / "model_edgetpu.tflite")
    m = Bundle.load(root, check=False).manifest
    files = [f for f in m.files if f.path != "model_edgetpu.tflite"] + [file_entry(root, "model_edgetpu.tflite")]
    models = m.models.model_copy(update={"edgetpu": "model_edgetpu.tflite"})
    write_manifest(root, m.model_copy(update={"files": files, "models": models}), SigningKey.load(trained_bundle_key))
    return root


def fake_usb_coral(sysfs: Path) -> None:
    """A USB Coral with its firmware loaded, as the kernel shows it (agent/inference/backends/edgetpu.py)."""
    dev = sysfs / "bus" / "usb" / "devices" / "2-1"
    dev.mkdir(parents=True)
    (dev / "idVendor").write_text("18d1\n")
    (dev / "idProduct").write_text("9302\n")


def install(src: Path, dest: Path) -> None:
    """Replace the library as a package upgrade does: a new file renamed over the old name."""
    tmp = dest.with_name(dest.name + ".new")
    shutil.copy(src, tmp)
    os.replace(tmp, dest)


class Recorder:
    """The last payload per topic and every detections message, from a real MQTT subscriber."""

    def __init__(self, broker: Any) -> None:
        self.last: dict[str, bytes] = {}
        self.detections: list[DetectionsMessage] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect(broker.host, broker.port)
        self.c.subscribe("iso/#", qos=1)
        self.c.loop_start()

    def _on(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.last[m.topic] = m.payload
            if m.topic == DETS:
                self.detections.append(DetectionsMessage.model_validate_json(m.payload))

    def state(self) -> NodeState | None:
        with self.lock:
            raw = self.last.get(STATE)
        return NodeState.model_validate_json(raw) if raw else None

    def reason(self) -> str:
        st = self.state()
        return (st.reason or "") if st else ""

    def n_detections(self) -> int:
        with self.lock:
            return len(self.detections)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def recorder(mqtt_broker: Any) -> Iterator[Recorder]:
    r = Recorder(mqtt_broker)
    yield r
    r.close()


def write_config(tmp_path: Path, broker: Any, keys: Path, library: Path, bundle: Path) -> Path:
    video = tmp_path / "v.avi"
    classes = Bundle.load(bundle, check=False).manifest.class_names
    make_video(video, n_frames=10, size=(320, 240), fps=10, classes=classes, seed=3)
    (tmp_path / "dev").mkdir()
    fake_usb_coral(tmp_path / "sys")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
node_id = "tpu-1"
topic_prefix = "iso"
trusted_keys_dir = "{keys}"
state_dir = "{tmp_path / 'state'}"
[broker]
url = "{broker.url}"
[camera]
source = "{video}"
[detect]
score_threshold = 0.3
[backend]
prefer = "edgetpu"
[backend.detectors.coral]
type = "edgetpu"
library = "{library}"
sysfs_root = "{tmp_path / 'sys'}"
dev_root = "{tmp_path / 'dev'}"
probe_timeout_s = 3.0
reprobe_interval_s = 3600.0
""")
    return cfg


def assert_alive_on_cpu(proc: subprocess.Popen[str], rec: Recorder, reason_has: Callable[[str], bool]) -> None:
    """The daemon runs, says degraded for the expected reason, and keeps publishing CPU detections."""
    assert wait_for(lambda: proc.poll() is not None or reason_has(rec.reason()), 40), rec.reason()
    assert proc.poll() is None, "the daemon died"
    st = rec.state()
    assert st is not None and st.status == "degraded" and st.backend == "cpu"
    n = rec.n_detections()
    assert wait_for(lambda: rec.n_detections() >= n + 3, 20)
    assert proc.poll() is None
    assert rec.detections[-1].backend == "cpu"


def names_everything(lib: Path) -> Callable[[str], bool]:
    runtime = f"{tflite.RUNTIME} {metadata.version(tflite.RUNTIME)}"
    return lambda r: str(lib) in r and VERSION in r and runtime in r and "usb:0" in r


def test_broken_libedgetpu_leaves_the_daemon_up_degraded_and_is_reprobed_when_replaced(
        mqtt_broker: Any, recorder: Recorder, libs: dict[str, Path], tpu_bundle: Path, trained_bundle_keys: Path,
        tmp_path: Path) -> None:
    lib = tmp_path / "lib" / "libedgetpu.so.1"
    lib.parent.mkdir()
    install(libs["crash"], lib)
    cfg = write_config(tmp_path, mqtt_broker, trained_bundle_keys, lib, tpu_bundle)
    log = open(tmp_path / "agent.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--bundle",
                             str(tpu_bundle)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    names = names_everything(lib)
    try:
        # Segfaults in the probe child: this process carries on with the CPU model.
        assert_alive_on_cpu(proc, recorder, lambda r: "SIGSEGV" in r and names(r))
        assert "crashed" in recorder.reason() and "load_delegate" in recorder.reason()

        install(libs["hang"], lib)  # hangs: the child is killed after probe_timeout_s
        assert_alive_on_cpu(proc, recorder, lambda r: "killed after 3 s" in r and names(r))

        install(libs["null"], lib)  # returns no delegate: its own error message
        assert_alive_on_cpu(proc, recorder, lambda r: "fake_delegate: no Edge TPU here" in r and names(r))

        cached = json.loads((tmp_path / "state" / "tpu_probe.json").read_text())["verdicts"]
        assert sorted(v["status"] for v in cached.values()) == ["crashed", "failed", "hung"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "agent.log").read_text()[-4000:])


def test_restart_reuses_the_cached_crash_verdict(
        mqtt_broker: Any, recorder: Recorder, libs: dict[str, Path], tpu_bundle: Path, trained_bundle_keys: Path,
        tmp_path: Path) -> None:
    """After a crash verdict, a restarted daemon does not load (or probe) the same library file again."""
    lib = tmp_path / "lib" / "libedgetpu.so.1"
    lib.parent.mkdir()
    install(libs["crash"], lib)
    cfg = write_config(tmp_path, mqtt_broker, trained_bundle_keys, lib, tpu_bundle)
    cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--bundle", str(tpu_bundle)]
    for run in range(2):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert_alive_on_cpu(proc, recorder, lambda r: "SIGSEGV" in r)
            probed_at = [v["probed_at"] for v in
                         json.loads((tmp_path / "state" / "tpu_probe.json").read_text())["verdicts"].values()]
            assert len(probed_at) == 1
            if run == 0:
                first = probed_at[0]
            else:
                assert probed_at[0] == first  # the stored verdict, not a new probe
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with recorder.lock:
            recorder.last.pop(STATE, None)


# ------------------------------------------------------------------------------------------ in-process


@pytest.fixture(scope="module")
def noop_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_all(tmp_path_factory.mktemp("fake-noop"), ("noop",))["noop"]


def tpu_cfg(tmp_path: Path, library: Path, **kw: Any) -> EdgeTpuConfig:
    if not (tmp_path / "sys").exists():
        fake_usb_coral(tmp_path / "sys")
        (tmp_path / "dev").mkdir()
    return EdgeTpuConfig(library=str(library), sysfs_root=tmp_path / "sys", dev_root=tmp_path / "dev",
                         state_dir=tmp_path / "state", probe_timeout_s=5.0, **kw)


def test_cleared_library_is_loaded_in_process_from_its_real_path(noop_lib: Path, tmp_path: Path) -> None:
    """A stored ok verdict (here from probing the no-op stand-in with the CPU twin model) lets open() load
    exactly the probed file, through a symlink as libedgetpu.so.1 is installed, on "usb:0" for "usb"."""
    link = tmp_path / "libedgetpu.so.1"
    link.symlink_to(noop_lib)
    ok = probe_cached(tmp_path / "state", str(link), "usb:0", model=shipped_model(compiled=False))
    assert ok.cleared, ok.reason
    cpu_model = shipped_model(compiled=False).path
    b = EdgeTpuBackend.open(cpu_model, tpu_cfg(tmp_path, link, device="usb"))
    try:
        assert b.device == "usb:0" and EdgeTpuBackend.device_held()
        assert b.run(np.load(shipped_model().input or ""))[0].shape == (1, 1001)
    finally:
        b.close()
    assert not EdgeTpuBackend.device_held()


def test_no_probe_while_this_process_holds_the_tpu(noop_lib: Path, libs: dict[str, Path], tmp_path: Path) -> None:
    """With a backend open, an unprobed library is refused without starting a child; a stored verdict
    still answers."""
    cpu_model = shipped_model(compiled=False).path
    ok = probe_cached(tmp_path / "state", str(noop_lib), "usb:0", model=shipped_model(compiled=False))
    held = EdgeTpuBackend.open(cpu_model, tpu_cfg(tmp_path, noop_lib))
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="not probed yet and the Edge TPU is in use"):
            EdgeTpuBackend.open(cpu_model, tpu_cfg(tmp_path, libs["crash"]))
        assert time.monotonic() - t0 < 1.0  # no child was started
        assert cached_verdict(tmp_path / "state", str(libs["crash"]), "usb:0") is None
        second = EdgeTpuBackend.open(cpu_model, tpu_cfg(tmp_path, noop_lib))  # cleared before: fine
        second.close()
    finally:
        held.close()
    assert ok.cleared
    with pytest.raises(BackendError, match="SIGSEGV") as exc:  # the TPU is free again: probed now
        EdgeTpuBackend.open(cpu_model, tpu_cfg(tmp_path, libs["crash"]))
    assert str(libs["crash"]) in str(exc.value) and VERSION in str(exc.value)
