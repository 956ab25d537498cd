"""The Engine on a real bundle trained by the builder: detections against the synthetic generator's ground
truth, TPU→CPU fallback with Google's real Edge TPU-compiled model, run-time TPU loss and recovery,
golden self-test through invoke_raw, class filter, bad frames."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from helpers import DetectionQuality, read_frames

from agent.config import AgentConfig
from agent.inference.backends import registry
from agent.inference.backends.base import BackendError
from agent.inference.backends.cpu import CpuBackend
from agent.inference.backends.edgetpu import EdgeTpuBackend
from agent.inference.engine import Engine, EngineError
from agent.security.bundle import Bundle, file_entry, write_manifest
from agent.security.signing import Keyring, SigningKey
from builder.data.synth import FrameTruth, make_video

# The test bundle's small model (a few minutes of CPU training) is confident on location, less on class:
# a moderate threshold, the same in every end-to-end test.
SCORE = 0.3
SEED = 5  # the video every detection-quality test uses (320x240, letterboxed to the model)


def agent_cfg(tmp_path: Path, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = dict(
        state_dir=tmp_path / "state",
        trusted_keys_dir=tmp_path / "keys",
        backend={"prefer": "cpu", "detectors": {"cpu": {"threads": 2}}},
        detect={"score_threshold": SCORE},
    )
    base.update(kw)
    return AgentConfig(**base)


def no_tpu(tmp_path: Path, legacy: bool = False) -> dict[str, Any]:
    """Backend config preferring the Edge TPU, with enumeration pointed at an empty fake tree (`legacy`:
    in the old flat form, [backend.edgetpu])."""
    (tmp_path / "sys").mkdir(exist_ok=True)
    (tmp_path / "dev").mkdir(exist_ok=True)
    tpu = {"sysfs_root": str(tmp_path / "sys"), "dev_root": str(tmp_path / "dev"), "reprobe_interval_s": 0.05}
    if legacy:
        return {"prefer": "edgetpu", "edgetpu": tpu}
    return {"prefer": "edgetpu", "detectors": {"coral": {"type": "edgetpu", **tpu}}}


def with_edgetpu_file(src: Path, dst: Path, edgetpu_model: Path, key_path: Path) -> Path:
    """Copy a bundle, add `edgetpu_model` as its Edge TPU model, re-sign it."""
    shutil.copytree(src, dst)
    shutil.copy(edgetpu_model, dst / "model_edgetpu.tflite")
    m = Bundle.load(dst, check=False).manifest
    files = [f for f in m.files if f.path != "model_edgetpu.tflite"] + [file_entry(dst, "model_edgetpu.tflite")]
    m2 = m.model_copy(update={"files": files, "models": m.models.model_copy(update={"edgetpu": "model_edgetpu.tflite"})})
    write_manifest(dst, m2, SigningKey.load(key_path))
    return dst


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, trained_bundle: Path) -> tuple[Path, list[FrameTruth]]:
    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    p = tmp_path_factory.mktemp("engine") / "clip.avi"
    truth = make_video(p, n_frames=8, size=(320, 240), fps=10, classes=classes, seed=SEED)
    return p, truth



@pytest.fixture
def bundle(trained_bundle: Path, trained_bundle_keys: Path) -> Bundle:
    return Bundle.load(trained_bundle, Keyring.load(trained_bundle_keys))


def test_detects_drawn_objects(bundle: Bundle, clip: tuple[Path, list[FrameTruth]], tmp_path: Path) -> None:
    path, truth = clip
    eng = Engine.load(bundle, agent_cfg(tmp_path))
    assert eng.backend_name == "cpu" and eng.state == "running" and eng.degraded_reason is None
    quality = DetectionQuality()
    for img, t in zip(read_frames(path), truth, strict=True):
        dets, st = eng.infer_timed(img)
        quality.add([(d.box, d.class_name) for d in dets], t.boxes, t.class_names)
        assert st.invoke_s > 0 and st.preprocess_s > 0 and st.postprocess_s >= 0
        for d in dets:
            assert 0 <= d.box[0] < d.box[2] <= 1 and 0 <= d.box[1] < d.box[3] <= 1
            assert d.class_name == bundle.manifest.class_names[d.class_id]
    quality.check()
    eng.close()
    with pytest.raises(EngineError, match="closed"):
        eng.infer(read_frames(path)[0])


def test_class_filter(bundle: Bundle, clip: tuple[Path, list[FrameTruth]], tmp_path: Path) -> None:
    path, truth = clip
    keep = truth[0].class_names[0]
    eng = Engine.load(bundle, agent_cfg(tmp_path, detect={"classes": [keep], "score_threshold": SCORE}))
    names = {d.class_name for img in read_frames(path)[:4] for d in eng.infer(img)}
    assert names == {keep}


def test_bad_frames_raise_and_engine_keeps_working(bundle: Bundle, clip: tuple[Path, list[FrameTruth]],
                                                   tmp_path: Path) -> None:
    eng = Engine.load(bundle, agent_cfg(tmp_path))
    with pytest.raises(EngineError, match="empty frame"):
        eng.infer(np.zeros((0, 0, 3), np.uint8))
    gray = cv2.cvtColor(read_frames(clip[0])[0], cv2.COLOR_BGR2GRAY)
    assert isinstance(eng.infer(gray), list)  # grayscale is accepted (letterbox converts it)
    assert len(eng.infer(read_frames(clip[0])[0])) > 0


def test_invoke_raw_reproduces_golden_output(bundle: Bundle, tmp_path: Path) -> None:
    g = bundle.manifest.golden
    if g is None:
        pytest.skip("bundle has no golden self-test")
    eng = Engine.load(bundle, agent_cfg(tmp_path))
    x = np.load(bundle.path(g.input))
    outs = eng.invoke_raw(x)
    assert len(outs) == len(eng.backend.outputs)
    expected = np.load(bundle.path(g.expected))
    flat = np.concatenate([o.astype(np.float32).ravel() for o in outs])
    if expected.size == flat.size:
        assert np.abs(flat - expected.astype(np.float32).ravel()).max() <= g.atol
    else:  # a single-output expectation
        assert any(np.abs(o.astype(np.float32) - expected.astype(np.float32)).max() <= g.atol
                   for o in outs if o.size == expected.size)


# ------------------------------------------------------------------------------------------------ fallback


@pytest.fixture
def tpu_bundle(trained_bundle: Path, trained_bundle_key: Path, trained_bundle_keys: Path, coral_data: Path,
               tmp_path: Path) -> Bundle:
    """The trained bundle plus Google's real Edge TPU-compiled model as its TPU file (which cannot run
    here: no Coral, no libedgetpu, and its single edgetpu-custom-op is not a CPU op)."""
    root = with_edgetpu_file(trained_bundle, tmp_path / "tpubundle",
                             coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", trained_bundle_key)
    return Bundle.load(root, Keyring.load(trained_bundle_keys))


@pytest.mark.parametrize("legacy", [False, True], ids=["detectors", "old-flat-config"])
def test_no_tpu_runs_cpu_model_degraded(tpu_bundle: Bundle, clip: tuple[Path, list[FrameTruth]],
                                        tmp_path: Path, legacy: bool) -> None:
    eng = Engine.load(tpu_bundle, agent_cfg(tmp_path, backend=no_tpu(tmp_path, legacy)))
    assert eng.backend_name == "cpu"
    assert eng.state == "degraded"
    assert "no Edge TPU found" in (eng.degraded_reason or "")
    img, t = read_frames(clip[0])[0], clip[1][0]
    quality = DetectionQuality()
    quality.add([(d.box, d.class_name) for d in eng.infer(img)], t.boxes, t.class_names)
    quality.check()
    assert eng.describe()["state"] == "degraded"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tpu_present_but_delegate_fails_runs_cpu_degraded(tpu_bundle: Bundle, tmp_path: Path) -> None:
    backend = no_tpu(tmp_path)
    usb = tmp_path / "sys" / "bus" / "usb" / "devices" / "2-1"
    usb.mkdir(parents=True)
    (usb / "idVendor").write_text("18d1\n")
    (usb / "idProduct").write_text("9302\n")
    eng = Engine.load(tpu_bundle, agent_cfg(tmp_path, backend=backend))
    assert eng.backend_name == "cpu" and eng.state == "degraded"
    assert "unusable" in (eng.degraded_reason or "")


def test_prefer_cpu_is_not_degraded(tpu_bundle: Bundle, tmp_path: Path) -> None:
    eng = Engine.load(tpu_bundle, agent_cfg(tmp_path))
    assert eng.backend_name == "cpu" and eng.state == "running"


class StandInTpu(EdgeTpuBackend):
    """Stands in for a USB Coral (absent here): the real interpreter of the bundle's CPU model, behind the
    Edge TPU backend class, failing like libedgetpu does when the device is unplugged mid-run."""

    plugged = True

    def invoke(self) -> None:
        if not StandInTpu.plugged:
            raise BackendError("edgetpu invoke failed: Failed to invoke: USB transfer error 2 [LibUsbDataInCallback]")
        super().invoke()


def test_tpu_lost_at_runtime_falls_back_and_recovers(bundle: Bundle, clip: tuple[Path, list[FrameTruth]],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = bundle.manifest

    def fake_open(cls: type, model_path: Path | str, cfg: Any = None) -> StandInTpu:
        if not StandInTpu.plugged:
            raise BackendError("no Edge TPU found (no /dev/apex_*, no USB 1a6e:089a or 18d1:9302)")
        cpu = CpuBackend.open(bundle.path(m.models.cpu))
        return StandInTpu(cpu._interp, "usb:0", str(model_path))

    monkeypatch.setattr(StandInTpu, "open", classmethod(fake_open))
    monkeypatch.setitem(registry.BACKENDS, "edgetpu", StandInTpu)  # what the engine asks for by type
    # A bundle whose manifest names an Edge TPU file: reuse the CPU file's name for the stand-in.
    tpu_manifest = m.model_copy(update={"models": m.models.model_copy(update={"edgetpu": m.models.cpu})})
    b = Bundle(bundle.root, tpu_manifest, bundle.manifest_bytes)
    StandInTpu.plugged = True
    eng = Engine.load(b, agent_cfg(tmp_path, backend={**no_tpu(tmp_path), "prefer": "edgetpu"}))
    frames = read_frames(clip[0])
    assert eng.backend_name == "edgetpu" and eng.device == "usb:0" and eng.state == "running"
    assert len(eng.infer(frames[0])) > 0

    StandInTpu.plugged = False  # unplugged mid-run: the same call still returns detections, from the CPU
    dets = eng.infer(frames[1])
    assert len(dets) > 0
    assert eng.backend_name == "cpu" and eng.state == "degraded"
    assert "lost at run time" in (eng.degraded_reason or "") and eng.fallbacks == 1
    for img in frames[2:4]:  # probes keep failing while it is away; frames keep flowing
        assert isinstance(eng.infer(img), list)
    assert eng.backend_name == "cpu"

    StandInTpu.plugged = True  # plugged back: a background probe reopens it, the engine switches back
    deadline = time.monotonic() + 10
    while eng.backend_name != "edgetpu" and time.monotonic() < deadline:
        eng.infer(frames[4])
        time.sleep(0.05)
    assert eng.backend_name == "edgetpu" and eng.state == "running" and eng.recoveries == 1
    assert len(eng.infer(frames[5])) > 0
    eng.close()


def test_broken_cpu_model_is_an_engine_error(trained_bundle: Path, trained_bundle_key: Path,
                                             trained_bundle_keys: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(trained_bundle, root)
    m = Bundle.load(root, check=False).manifest
    (root / m.models.cpu).write_bytes(b"\0" * 64)
    files = [file_entry(root, f.path) for f in m.files]
    write_manifest(root, m.model_copy(update={"files": files}), SigningKey.load(trained_bundle_key))
    with pytest.raises(EngineError, match=m.name):
        Engine.load(Bundle.load(root, Keyring.load(trained_bundle_keys)), agent_cfg(tmp_path))


def test_tpu_lost_and_cpu_model_broken_raises_without_reload_storm(
        bundle: Bundle, clip: tuple[Path, list[FrameTruth]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = bundle.manifest
    root = tmp_path / "b"
    root.mkdir()
    shutil.copy(bundle.path(m.models.cpu), root / "tpu.tflite")
    (root / "cpu.tflite").write_bytes(b"\0" * 64)  # the fallback cannot load
    opened: list[str] = []
    real_open = CpuBackend.open.__func__  # type: ignore[attr-defined]

    def counting_open(cls: type, model_path: Path | str, cfg: Any = None) -> CpuBackend:
        opened.append(Path(model_path).name)
        return real_open(cls, model_path, cfg)

    def fake_tpu(cls: type, model_path: Path | str, cfg: Any = None) -> StandInTpu:
        cpu = real_open(CpuBackend, model_path, None)
        return StandInTpu(cpu._interp, "usb:0", str(model_path))

    monkeypatch.setattr(StandInTpu, "open", classmethod(fake_tpu))
    monkeypatch.setitem(registry.BACKENDS, "edgetpu", StandInTpu)
    monkeypatch.setattr(CpuBackend, "open", classmethod(counting_open))
    man = m.model_copy(update={"models": m.models.model_copy(update={"cpu": "cpu.tflite", "edgetpu": "tpu.tflite"})})
    StandInTpu.plugged = True
    backend = no_tpu(tmp_path)
    backend["detectors"]["coral"]["reprobe_interval_s"] = 30.0
    eng = Engine.load(Bundle(root, man, b""), agent_cfg(tmp_path, backend=backend))
    frame = read_frames(clip[0])[0]
    assert eng.backend_name == "edgetpu" and len(eng.infer(frame)) > 0
    StandInTpu.plugged = False
    try:
        with pytest.raises(EngineError, match="CPU model failed too"):
            eng.infer(frame)
        for _ in range(5):
            with pytest.raises(EngineError):
                eng.infer(frame)
        assert opened.count("cpu.tflite") == 1  # one attempt per reprobe interval, not one per frame
    finally:
        StandInTpu.plugged = True
