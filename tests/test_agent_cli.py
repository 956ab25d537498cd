"""edge-agent run / check / infer as a user runs them (subprocesses), plus config precedence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import paho.mqtt.client as mqtt
import pytest
from helpers import DetectionQuality, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import ConfigError, load_config
from agent.protocol.messages import NodeState
from builder.data.synth import make_video

ROOT = Path(__file__).resolve().parents[1]


def edge_agent(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ config


def test_config_toml_env_and_override_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file = write_config(tmp_path / "agent.toml", """
node_id = "pi-7"
groups = ["garden", "north"]
[broker]
url = "mqtts://broker.lan:8883"
username = "pi7"
password = "s3cret"
[camera]
source = "rtsp://cam.lan/stream"
[backend]
prefer = "edgetpu"
[backend.edgetpu]
device = "usb:1"
[backend.cpu]
threads = 3
[detect]
score_threshold = 0.55
classes = ["person"]
""")
    monkeypatch.setenv("EDGE_AGENT_BACKEND__CPU__THREADS", "4")
    monkeypatch.setenv("EDGE_AGENT_NODE_ID", "pi-env")
    cfg = load_config(cfg_file)
    assert cfg.node_id == "pi-env"  # env beats TOML
    assert cfg.backend.cpu.threads == 4
    assert cfg.backend.edgetpu.device == "usb:1"  # TOML kept beside the env override of a sibling key
    assert cfg.broker.tls and cfg.broker.port == 8883 and cfg.broker.password is not None
    assert "s3cret" not in repr(cfg)  # secrets stay out of logs
    assert cfg.camera.resolved_kind() == "rtsp"
    assert cfg.detect.classes == ["person"]
    assert load_config(cfg_file, node_id="kw").node_id == "kw"  # keyword beats env


@pytest.mark.parametrize("text,needle", [
    ('node_id = "a/b"', "node_id"),
    ('[backend.edgetpu]\ndevice = "tpu"', "backend.edgetpu.device"),
    ('[broker]\nurl = "http://x"', "broker.url"),
    ('[detect]\nscore_threshold = 2', "detect.score_threshold"),
    ('colour = "red"', "colour"),
    ("node_id = ", "invalid TOML"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(write_config(tmp_path / "bad.toml", text))


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "docs" / "agent.example.toml")
    assert cfg.node_id and cfg.broker.url


# ------------------------------------------------------------------------------------------------ infer


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, trained_bundle: Path) -> tuple[list[Path], list[Any]]:
    classes = json.loads((trained_bundle / "manifest.json").read_text())["class_names"]
    d = tmp_path_factory.mktemp("imgs")
    # Enough objects (~20) that one unlucky frame of the small test model cannot swing the rate past the bar.
    truth = make_video(d / "v.avi", n_frames=10, size=(320, 240), fps=5, classes=classes, seed=5)
    cap = cv2.VideoCapture(str(d / "v.avi"))
    paths = []
    for i in range(len(truth)):
        ok, img = cap.read()
        assert ok
        p = d / f"frame{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    cap.release()
    return paths, truth


def test_infer_json_one_object_per_image(images: tuple[list[Path], list[Any]], trained_bundle: Path,
                                         trained_bundle_keys: Path) -> None:
    paths, truth = images
    r = edge_agent("infer", *map(str, paths), "--bundle", str(trained_bundle), "--keys", str(trained_bundle_keys),
                   "--cpu", "--json", "--score", "0.3")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["image"] for x in lines] == [str(p) for p in paths]
    quality = DetectionQuality()
    for obj, t in zip(lines, truth, strict=True):
        assert obj["backend"] == "cpu" and obj["width"] == 320
        quality.add([(d["box"], d["class_name"]) for d in obj["detections"]], t.boxes, t.class_names)
        for d in obj["detections"]:
            assert len(d["box"]) == 4 and all(0 <= v <= 1 for v in d["box"]) and 0 < d["score"] <= 1
    quality.check()


def test_infer_human_output_and_bad_image(images: tuple[list[Path], list[Any]], trained_bundle: Path,
                                          tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    r = edge_agent("infer", str(images[0][0]), str(bad), "--bundle", str(trained_bundle), "--cpu")
    assert r.returncode == 1
    assert "detection(s)" in r.stdout and "broken.jpg" in r.stderr
    assert "signature not verified" in r.stderr


def test_infer_bad_bundle_is_a_clear_error(tmp_path: Path, images: tuple[list[Path], list[Any]]) -> None:
    r = edge_agent("infer", str(images[0][0]), "--bundle", str(tmp_path / "nope"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------ check


def test_check_reports_every_part(mqtt_broker: Any, tmp_path: Path, trained_bundle: Path,
                                  trained_bundle_keys: Path) -> None:
    video = tmp_path / "v.avi"
    make_video(video, n_frames=3, size=(160, 120), fps=5)
    sysfs = tmp_path / "sys" / "bus" / "usb" / "devices" / "2-1"
    sysfs.mkdir(parents=True)
    (sysfs / "idVendor").write_text("18d1\n")
    (sysfs / "idProduct").write_text("9302\n")
    cfg = write_config(tmp_path / "a.toml", f"""
node_id = "chk"
trusted_keys_dir = "{trained_bundle_keys}"
[broker]
url = "{mqtt_broker.url}"
[camera]
source = "{video}"
[backend.edgetpu]
sysfs_root = "{tmp_path / 'sys'}"
dev_root = "{tmp_path / 'dev'}"
""")
    r = edge_agent("check", "--config", str(cfg), "--bundle", str(trained_bundle), "--json", "--timeout", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["broker"]["status"] == "OK" and out["camera"]["status"] == "OK"
    assert "usb:0" in out["edgetpu"]["detail"]
    assert out["keys"]["status"] == "OK"
    assert out["bundle"]["status"] == "OK" and "signature verified" in out["bundle"]["detail"]

    mqtt_broker.stop()
    r = edge_agent("check", "--config", str(cfg), "--timeout", "2")
    assert r.returncode == 1
    assert "FAIL broker" in r.stdout and "OK   camera" in r.stdout


def test_check_invalid_config_exit_2(tmp_path: Path) -> None:
    r = edge_agent("check", "--config", str(write_config(tmp_path / "x.toml", "[camera]\nloop = 'perhaps'")))
    assert r.returncode == 2 and "camera.loop" in r.stderr


# ------------------------------------------------------------------------------------------------ run


def test_run_daemon_until_sigterm(mqtt_broker: Any, tmp_path: Path, trained_bundle: Path,
                                  trained_bundle_keys: Path) -> None:
    video = tmp_path / "v.avi"
    make_video(video, n_frames=10, size=(320, 240), fps=10)
    cfg = write_config(tmp_path / "run.toml", f"""
node_id = "runner"
topic_prefix = "cli"
trusted_keys_dir = "{trained_bundle_keys}"
state_dir = "{tmp_path / 'state'}"
[broker]
url = "{mqtt_broker.url}"
[camera]
source = "{video}"
[backend]
prefer = "cpu"
""")
    got: dict[str, bytes] = {}
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.__setitem__(m.topic, m.payload)
    sub.connect(mqtt_broker.host, mqtt_broker.port)
    sub.subscribe("cli/#")
    sub.loop_start()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--bundle",
                             str(trained_bundle)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 40
        # Detections, state and availability arrive on three topics in no fixed order: wait for all three.
        wanted = ("cli/node/runner/detections", "cli/node/runner/state", "cli/node/runner/availability")
        while time.monotonic() < deadline and not all(k in got for k in wanted):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        assert "cli/node/runner/detections" in got
        st = NodeState.model_validate_json(got["cli/node/runner/state"])
        assert st.status == "running" and st.node == "runner"
        assert got["cli/node/runner/availability"] == b"online"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert wait_for(lambda: got["cli/node/runner/availability"] == b"offline", 5)
        assert NodeState.model_validate_json(got["cli/node/runner/state"]).status == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.loop_stop()
        sub.disconnect()


def test_agent_runtime_imports_no_ml_frameworks() -> None:
    code = (
        "import sys, agent.cli, agent.service.daemon, agent.inference.engine, agent.camera.sources, agent.inference.pipeline, agent.service.mqtt\n"
        "import agent.commands.run, agent.commands.check, agent.commands.infer, agent.inference.decode.ssd\n"
        "agent.cli.build_parser()\n"
        "bad = [m for m in ('torch', 'tensorflow', 'onnx', 'onnxruntime', 'libreyolo') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
