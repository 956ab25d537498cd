"""Helpers for the OTA update tests: real bundles from Google's Coral models, a real TFLite engine,
a frame loop on a real video file, and a node harness (real paho client, real store, real updater).

The engine here is a thin wrapper over a real TFLite interpreter (agent.inference.tflite), because Google's
classification models are not detectors agent.inference.engine can decode; the update machinery under
test (verify, download, store, golden self-test, swap, trial, commit, rollback) is the real one.

Run as a script it is the agent process for the SIGKILL fault test:
    python tests/helpers_updates.py agent CONFIG.json
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from helpers import CORAL_DATA as CORAL  # noqa: E402

from agent.camera.sources import Frame  # noqa: E402
from agent.inference.frames import FrameResult, FrameStats  # noqa: E402
from agent.inference.tflite import make_interpreter, run  # noqa: E402
from agent.protocol.manifest import (  # noqa: E402
    GoldenTest,
    Manifest,
    ModelFiles,
    OutputLayout,
    Target,
    TensorSpec,
)
from agent.protocol.messages import ModelRef, NodeState, UpdateState  # noqa: E402
from agent.protocol.topics import Topics  # noqa: E402
from agent.security.bundle import Bundle, file_entry, write_manifest  # noqa: E402
from agent.security.signing import Keyring, SigningKey  # noqa: E402
from agent.system.clock import ClockStatus  # noqa: E402
from agent.updates.store import ModelStore, UpdatesConfig  # noqa: E402
from agent.updates.updater import Updater  # noqa: E402

MOBILENET = CORAL / "mobilenet_v1_0.25_128_quant.tflite"
MOBILENET_224 = CORAL / "mobilenet_v2_1.0_224_quant.tflite"


# -- bundles ---------------------------------------------------------------------------------------
def golden_input(size: int) -> np.ndarray:
    img = cv2.imread(str(CORAL / "cat_720p.jpg"))
    assert img is not None
    img = cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return img[None].astype(np.uint8)


def corrupt_weights(src: Path, dst: Path) -> None:
    """A real TFLite file whose weights are all set to their zero point: it loads, runs, and answers the
    same thing for every input (garbage). Weight bytes are located by their content in the flatbuffer."""
    from agent.inference.tflite import Interpreter

    data = bytearray(src.read_bytes())
    it = Interpreter(model_path=str(src))
    it.allocate_tensors()
    # Only the filters of conv / fully-connected ops: constant tensors whose bytes are in the file.
    filters = {op["inputs"][1] for op in it._get_ops_details()
               if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op["inputs"]) > 1}
    details = {d["index"]: d for d in it.get_tensor_details()}
    for idx in sorted(filters):
        d = details[idx]
        b = it.get_tensor(idx).tobytes()
        if len(b) >= 256 and len(set(b)) > 4:
            off = data.find(b)
            if off >= 0:
                data[off:off + len(b)] = bytes([int(d["quantization"][1])]) * len(b)
    dst.write_bytes(bytes(data))


def make_bundle(
    dst: Path,
    key: SigningKey,
    version: int,
    *,
    model: Path = MOBILENET,
    name: str = "mobilenet",
    golden: str = "ok",  # "ok" | "bad" (expected output altered) | "none"
    target: Target | None = None,
    expires: datetime | None = None,
    no_expiry: bool = False,
    min_agent_version: str = "0.0.0",
    garbage: bool = False,
    corrupt: bool = False,
    declared_size: int | None = None,
    input_size: int | None = None,
) -> Path:
    """Write and sign a real bundle around a Coral TFLite classifier (expiring in a day unless `expires`
    says otherwise or `no_expiry`: nodes refuse manifests without expiry by default)."""
    if expires is None and not no_expiry:
        expires = datetime.now(UTC) + timedelta(days=1)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    mpath = dst / "model_quant.tflite"
    if garbage:
        corrupt_weights(model, mpath)
    else:
        shutil.copy(model, mpath)
    interp = make_interpreter(str(mpath), num_threads=1)
    inp = interp.get_input_details()[0]
    size = int(inp["shape"][1])
    spec_size = input_size or size
    x = golden_input(spec_size)
    np.save(dst / "golden_input.npy", x)
    if spec_size == size:
        expected = run(interp, x)[0]
    else:  # the model cannot even take this input: the expected output is moot
        expected = np.zeros([int(s) for s in interp.get_output_details()[0]["shape"]], np.uint8)
    if golden == "bad":
        expected = (expected.astype(np.int32) + 60).clip(0, 255).astype(np.uint8)
    np.save(dst / "golden_expected.npy", expected)
    if corrupt:
        raw = bytearray(mpath.read_bytes())
        raw[8:len(raw) // 2] = os.urandom(len(raw) // 2 - 8)  # header kept, tables destroyed
        mpath.write_bytes(bytes(raw))
    out = interp.get_output_details()[0]
    labels = (CORAL / "imagenet_labels.txt").read_text().splitlines()
    n_out = int(out["shape"][-1])
    labels = (labels + [f"c{i}" for i in range(n_out)])[:n_out]
    files = [file_entry(dst, p) for p in ("model_quant.tflite", "golden_input.npy", "golden_expected.npy")]
    if declared_size is not None:
        files[0] = files[0].model_copy(update={"size": declared_size})
    m = Manifest(
        name=name,
        version=version,
        created=datetime.now(UTC),
        files=files,
        models=ModelFiles(cpu="model_quant.tflite"),
        input=TensorSpec(name=str(inp["name"]), shape=[1, spec_size, spec_size, 3], dtype="uint8",
                         scale=float(inp["quantization"][0]), zero_point=int(inp["quantization"][1])),
        outputs=[TensorSpec(name=str(out["name"]), shape=[int(s) for s in out["shape"]], dtype="uint8",
                            scale=float(out["quantization"][0]), zero_point=int(out["quantization"][1]))],
        class_names=labels,
        layout=OutputLayout(decoder="ssd_postprocess", num_classes=n_out),
        golden=None if golden == "none" else GoldenTest(input="golden_input.npy", expected="golden_expected.npy",
                                                        atol=2.0, max_latency_ms=2000.0),
        min_agent_version=min_agent_version,
        expires=expires,
        target=target or Target(),
    )
    write_manifest(dst, m, key)
    return dst


def make_variant(src: Path, dst: Path, key_path: Path, version: int, *, golden_bad: bool = False,
                 garbage: bool = False, expires: datetime | None = None) -> Path:
    """A copy of a real bundle as version `version`, optionally broken or with an expiry, re-signed with
    the fleet key (`edge-builder publish` sets the expiry of what it publishes anyway)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    m = Bundle.load(dst, check=False).manifest
    assert m.golden is not None
    if garbage:
        model = dst / m.models.cpu
        corrupt_weights(src / m.models.cpu, model)
        # Its own golden data agrees with it: only the trial on real frames can tell it is garbage.
        outs = run(make_interpreter(str(model), num_threads=1), np.load(dst / m.golden.input))
        np.save(dst / m.golden.expected, np.concatenate([o.reshape(-1) for o in outs]))
    if golden_bad:
        exp = np.load(dst / m.golden.expected)
        np.save(dst / m.golden.expected, ((exp.astype(np.int32) + 90) % 256).astype(exp.dtype))
    files = [file_entry(dst, f.path) for f in m.files]
    update: dict[str, Any] = {"version": version, "files": files}
    if expires is not None:
        update["expires"] = expires
    write_manifest(dst, m.model_copy(update=update), SigningKey.load(key_path))
    return dst


def synced_clock() -> ClockStatus:
    return ClockStatus(synchronized=True, source="none", detail="test: synchronized")


def unsynced_clock() -> ClockStatus:
    return ClockStatus(synchronized=False, source="none", detail="test: not synchronized")


# -- engine and frame loop -------------------------------------------------------------------------
class TfliteEngine:
    """A real TFLite interpreter behind the two calls the updater and the frame loop make."""

    def __init__(self, bundle: Bundle) -> None:
        m = bundle.manifest
        self.model_version = m.version
        self.model_name = m.name
        self.interp = make_interpreter(str(bundle.path(m.models.cpu)), num_threads=1)
        self.size = int(self.interp.get_input_details()[0]["shape"][1])
        self.lock = threading.Lock()
        self.closed = False

    def invoke_raw(self, input: np.ndarray) -> list[np.ndarray]:  # noqa: A002
        with self.lock:
            if self.closed:
                raise RuntimeError("engine closed")
            return run(self.interp, input)

    def infer(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        x = cv2.cvtColor(cv2.resize(frame_bgr, (self.size, self.size), interpolation=cv2.INTER_AREA),
                         cv2.COLOR_BGR2RGB)[None]
        return x, self.invoke_raw(x)

    def close(self) -> None:
        with self.lock:
            self.closed = True


def write_video(path: Path, frames: int = 60, size: tuple[int, int] = (160, 120), fps: float = 30.0) -> Path:
    """A real MJPG AVI of a moving, textured scene (so successive frames differ)."""
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(frames):
        img = np.roll(base, i * 3, axis=1).copy()
        cv2.circle(img, (int(w / 2 + 40 * np.sin(i / 5)), h // 2), 20, (0, 0, 255), -1)
        vw.write(img)
    vw.release()
    return path


def frame_result(*, engine: Any = None, version: int | None = None, latency_s: float = 0.0,
                 outputs: list[np.ndarray] | None = None, error: str | None = None,
                 image: np.ndarray | None = None, index: int = 0) -> FrameResult:
    """The pipeline's per-frame record for one frame of `engine` (all of `latency_s` as invoke time)."""
    img = image if image is not None else np.zeros((4, 4, 3), np.uint8)
    now = time.time()
    stats = FrameStats(index=index, frame_ts=now, capture_wait_s=0.0, preprocess_s=0.0, invoke_s=latency_s,
                       postprocess_s=0.0, end_to_end_s=latency_s, detections=0, backend="cpu",
                       model_version=version, error=error)
    return FrameResult(Frame(img, now, time.monotonic(), index), [], stats, getattr(engine, "model_name", None),
                       version, "cpu", engine=engine, outputs=outputs)


class FrameLoop:
    """Reads a real video file (looping), runs the current engine on every frame at the video's pace,
    swaps engines between two frames, and reports each frame to the updater's hook."""

    def __init__(self, video: Path, engine: Any, hook: Any = None, fps: float = 30.0) -> None:
        cap = cv2.VideoCapture(str(video))
        self.frames_src: list[np.ndarray] = []
        while True:
            ok, img = cap.read()
            if not ok:
                break
            self.frames_src.append(img)
        cap.release()
        if not self.frames_src:
            raise RuntimeError(f"cannot read {video}")
        self.engine = engine
        self.hook = hook
        self.period = 1.0 / fps
        self.index = 0
        self.log: list[tuple[int, float, int | None, str | None]] = []  # (frame index, t, version, error)
        self._pending: Any = None
        self._swapped = threading.Event()
        self._old: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frames", daemon=True)
        self.swap_times: list[float] = []
        self.seen_versions: list[int] = []

    def start(self) -> FrameLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def swap_engine(self, new: Any) -> Any:
        self._swapped.clear()
        self._pending = new
        if not self._thread.is_alive():
            old, self.engine, self._pending = self.engine, new, None
            return old
        self._swapped.wait(10)
        return self._old

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self._pending is not None:
                self._old, self.engine, self._pending = self.engine, self._pending, None
                self.swap_times.append(time.monotonic())
                self._swapped.set()
            img = self.frames_src[self.index % len(self.frames_src)]
            t0 = time.perf_counter()
            err, outs = None, None
            engine = self.engine
            try:
                outs = engine.infer(img)[1]
            except Exception as exc:  # noqa: BLE001 - a bad frame is reported, never fatal
                err = f"{type(exc).__name__}: {exc}"
            lat = time.perf_counter() - t0
            version = getattr(engine, "model_version", None)
            self.log.append((self.index, time.monotonic(), version, err))
            if version is not None and (not self.seen_versions or self.seen_versions[-1] != version):
                self.seen_versions.append(version)
            if self.hook is not None:
                self.hook(frame_result(engine=engine, version=version, latency_s=lat, outputs=outs, error=err,
                                       image=img, index=self.index))
            self.index += 1
            next_t += self.period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()

    def wait_frames(self, n: int, timeout: float = 10.0) -> None:
        target = self.index + n
        deadline = time.monotonic() + timeout
        while self.index < target and time.monotonic() < deadline:
            time.sleep(0.01)


# -- node harness ----------------------------------------------------------------------------------
@dataclass
class NodeHarness:
    """One node: store + keyring + updater + frame loop + real MQTT client (v5)."""

    state_dir: Path
    keys_dir: Path
    broker_host: str
    broker_port: int
    video: Path
    initial_bundle: Path | None = None
    node: str = "node-1"
    groups: list[str] = field(default_factory=lambda: ["lab"])
    config: UpdatesConfig = field(default_factory=lambda: UpdatesConfig(trial_frames=15, trial_seconds=5.0,
                                                                         read_timeout_s=1.0,
                                                                         connect_timeout_s=1.0,
                                                                         total_timeout_s=20.0))
    prefix: str = "edgefleet"
    on_transition: Any = None
    # The updater's clock-sync source; this container's kernel may say "unsynchronized", tests decide.
    clock: Any = field(default_factory=lambda: synced_clock)

    def start(self) -> NodeHarness:
        import paho.mqtt.client as mqtt

        from agent.service.commands import CommandsHandler, paho_responder

        self.topics = Topics(self.prefix)
        self.keyring = Keyring.load(self.keys_dir)
        self.store = ModelStore(self.state_dir / "models", keep=self.config.keep_versions, keyring=self.keyring)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"agent-{self.node}",
                                  protocol=mqtt.MQTTv5)
        self.updater = Updater(
            node=self.node, groups=self.groups, topics=self.topics, store=self.store, keyring=self.keyring,
            config=self.config, load_engine=TfliteEngine, swap_engine=self._swap, publish=self._publish,
            on_change=self.publish_state, clock=self.clock,
        )
        self.updater.on_transition = self.on_transition
        self._state_version: int | None = None
        bundle = self.updater.startup(self.initial_bundle)
        assert bundle is not None, "no model to run"
        engine = TfliteEngine(bundle)
        self.updater.set_running(engine, bundle)
        self.loop = FrameLoop(self.video, engine, hook=self._on_frame)
        self.commands = CommandsHandler(self.node, self.topics, self.updater, paho_responder(self.client))
        self.announce_topics = self.topics.announce_subscriptions(self.node, self.groups)
        self.connected = threading.Event()

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            c.subscribe([(t, 1) for t in [*self.announce_topics, self.commands.topic]])
            self.connected.set()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            if msg.topic == self.commands.topic:
                self.commands.on_message(msg)
            elif msg.topic in self.announce_topics and msg.payload:
                self.updater.on_announcement(msg.payload, msg.topic)

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect(self.broker_host, self.broker_port)
        self.client.loop_start()
        assert self.connected.wait(10), "agent could not connect to the broker"
        self.loop.start()
        self.updater.start()
        return self

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    def _swap(self, new: Any) -> Any:
        return self.loop.swap_engine(new)

    def _on_frame(self, result: FrameResult) -> None:
        self.updater.on_frame(result)
        if result.model_version != self._state_version:
            # The retained state follows the model that really runs frames (published off this thread).
            self._state_version = result.model_version
            threading.Thread(target=self.publish_state, daemon=True).start()

    def publish_state(self) -> None:
        engine = self.loop.engine if hasattr(self, "loop") else None
        running = ModelRef(name=engine.model_name, version=engine.model_version) if engine else None
        st = NodeState(node=self.node, status="running", agent_version="test", backend="cpu", reason=f"pid {os.getpid()}",
                       model=running, previous_model=self.updater.previous_model(),
                       last_update=self.updater.last_result(), groups=self.groups)
        self.client.publish(self.topics.state(self.node), st.model_dump_json(), qos=1, retain=True)

    def stop(self) -> None:
        self.updater.stop()
        self.loop.stop()
        self.client.disconnect()
        self.client.loop_stop()


# -- the agent process for the SIGKILL test ---------------------------------------------------------
def agent_main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    harness = NodeHarness(
        state_dir=Path(cfg["state_dir"]), keys_dir=Path(cfg["keys_dir"]), broker_host=cfg["host"],
        broker_port=int(cfg["port"]), video=Path(cfg["video"]),
        initial_bundle=Path(cfg["initial_bundle"]) if cfg.get("initial_bundle") else None,
        config=UpdatesConfig(trial_frames=int(cfg.get("trial_frames", 10)), trial_seconds=3.0,
                             read_timeout_s=2.0, connect_timeout_s=1.0, total_timeout_s=20.0),
    )
    kill_at = cfg.get("kill_at")  # e.g. "downloading:2" = at the 2nd downloading transition
    if kill_at:
        state_name, _, nth = kill_at.partition(":")
        want, seen = int(nth or 1), [0]

        def on_transition(state: UpdateState) -> None:
            if state.value == state_name:
                seen[0] += 1
                if seen[0] >= want:
                    os.kill(os.getpid(), signal.SIGKILL)

        harness.on_transition = on_transition
    harness.start()
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        harness.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "agent":
        sys.exit(agent_main(sys.argv[2]))
    print(__doc__)
    sys.exit(2)


# -- the operator's side ---------------------------------------------------------------------------
class Watcher:
    """A real MQTT subscriber recording every update status and node state of the fleet."""

    def __init__(self, host: str, port: int, prefix: str = "edgefleet") -> None:
        import paho.mqtt.client as mqtt

        self.topics = Topics(prefix)
        self.updates: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self.responses: dict[bytes, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watcher-{os.getpid()}-{id(self)}",
                                  protocol=mqtt.MQTTv5)
        ready = threading.Event()

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            c.subscribe([(self.topics.all_nodes("update"), 1), (self.topics.all_nodes("state"), 1),
                         (self.topics.admin_replies("test") + "/#", 1)])
            ready.set()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            if not msg.payload:
                return
            data = json.loads(msg.payload)
            with self.lock:
                if msg.topic.endswith("/update"):
                    self.updates.append(data)
                elif msg.topic.endswith("/state"):
                    data["_t"] = time.monotonic()  # arrival, to tell a new state from a stale retained one
                    self.states.append(data)
                else:
                    corr = getattr(msg.properties, "CorrelationData", None)
                    self.responses[bytes(corr) if corr else b""] = data

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert ready.wait(10)
        time.sleep(0.1)  # let the SUBACK land

    def mark(self) -> int:
        with self.lock:
            return len(self.updates)

    def wait_update(self, states: set[str], since: int = 0, version: int | None = None,
                    timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for u in self.updates[since:]:
                    if u["state"] in states and (version is None or u.get("version") == version):
                        return u
            time.sleep(0.02)
        with self.lock:
            seen = [(u["state"], u.get("version"), u.get("reason")) for u in self.updates[since:]]
        raise AssertionError(f"no update status in {states} (v{version}) within {timeout} s; saw {seen}")

    def wait_state(self, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for s in reversed(self.states):
                    if pred(s):
                        return s
            time.sleep(0.02)
        with self.lock:
            last = self.states[-1] if self.states else None
        raise AssertionError(f"node state never matched within {timeout} s; last {last}")

    def command(self, node: str, request: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        corr = os.urandom(8)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.topics.admin_replies("test")  # nodes answer only under an admin's replies
        props.CorrelationData = corr
        self.client.publish(self.topics.command(node), json.dumps(request), qos=1, properties=props)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if corr in self.responses:
                    return self.responses[corr]
            time.sleep(0.02)
        raise AssertionError(f"no response to {request} within {timeout} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(bundle: Path, broker_url: str, key_path: Path, www: Path, base_url: str, target: str = "all") -> Any:
    """edge-builder publish, as a library call (the CLI is tested separately)."""
    from builder.fleet.publish import publish_bundle

    return publish_bundle(bundle, broker_url, Target.parse(target), key_path, http_base=base_url, upload_dir=www)
