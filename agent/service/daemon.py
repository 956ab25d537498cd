"""The agent daemon: owns every thread and wires the parts together.

    MqttClient (paho network thread)      availability LWT, retained state, detections
    Camera (capture + session threads)    freshest frame, reconnect with backoff
    Pipeline (inference + publisher)      Engine on the Edge TPU or CPU, DetectionPublisher
    service loop (the caller's thread)    NodeState on change and every state_interval_s, signals

Startup order: broker (background connect) → camera → model → pipeline. Nothing here exits on a
missing camera, broker or model: each is reported in the retained NodeState and retried.

Extension points for the OTA updater and telemetry are marked `[updater]` and `[telemetry]`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.camera.sources import Camera, CameraState
from agent.config import AgentConfig
from agent.inference.config import engine_detect
from agent.inference.engine import Engine, EngineError
from agent.inference.feeds import Feed
from agent.inference.frames import FrameResult
from agent.inference.pipeline import DetectionPublisher, Pipeline
from agent.inference.pool import PoolEngine, load_engine, pool_devices
from agent.protocol.messages import ModelRef, NodeState
from agent.protocol.topics import Topics
from agent.security.bundle import Bundle, BundleError
from agent.security.keyring_store import load_trust
from agent.security.signing import Keyring, SignatureError
from agent.service.capture_link import attach as attach_capture
from agent.service.mqtt import MqttClient
from agent.service.shadow_link import attach as attach_shadow
from agent.service.status_file import StatusWriter, status_path
from agent.telemetry.runtime import TelemetryRuntime
from agent.updates.store import ModelStore, StoreError  # [updater]
from agent.updates.updater import Updater  # [updater]

log = logging.getLogger(__name__)


class AgentService:
    def __init__(self, cfg: AgentConfig, camera: Camera | None = None,
                 cameras: dict[str, Camera] | None = None) -> None:
        """`camera` replaces the first camera, `cameras` any camera by name (tests)."""
        self.cfg = cfg
        self.node = cfg.node_id
        self.topics = Topics(cfg.topic_prefix)
        self.mqtt = MqttClient(cfg.broker, client_id=f"edge-agent-{self.node}",
                               availability_topic=self.topics.availability(self.node))
        entries = cfg.camera_entries()
        self.engine_detect = engine_detect(cfg.detect, entries)  # the shared decode; each camera filters its own
        given = dict(cameras or {})
        if camera is not None:
            given[entries[0].name] = camera
        self.feeds = [Feed.from_entry(e, cfg.detect, self.engine_detect, given.get(e.name)) for e in entries]
        self.cameras = {f.name: f.camera for f in self.feeds}
        self.camera = self.feeds[0].camera  # the first (with [camera]: the only) camera
        self.publisher = DetectionPublisher(self.mqtt, self.topics, self.node, cfg.publish)
        self.pipeline = Pipeline(self.feeds, None, cfg.detect, sink=self.publisher, workers=_workers(cfg))
        self.keyring = self._load_keyring()
        # [updater] issue 6: OTA model updates (agent/updates/updater.py) and the MQTT v5 commands.
        self.updater: Updater | None = self._make_updater()
        self.bundle: Bundle | None = None
        self.error: str | None = None  # why no model runs, when none does
        self.ready = threading.Event()  # broker connected and model loaded
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._last_state_key: tuple[Any, ...] | None = None
        self._last_state_at = 0.0
        self._started = False
        # Callbacks other parts register before start(): on_ready() once, on_stop() at shutdown.
        self.on_ready: list[Callable[[], None]] = []
        self.on_stop: list[Callable[[], None]] = []
        self.pipeline.add_frame_hook(self._on_frame)
        self.pipeline.add_tick_hook(self._on_tick)
        self.mqtt.add_on_connect(self._on_connect)
        # [telemetry] issue 7: telemetry thread, power/thermal, HA discovery, sd_notify READY/STATUS/WATCHDOG
        self.telemetry = TelemetryRuntime(cfg, self.mqtt, self.topics, __version__, camera=self.camera,
                                          feeds=self.feeds)

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> AgentService:
        if self._started:
            return self
        self._started = True
        self.mqtt.start()
        # state_dir/daemon-status.json: check/doctor read it instead of taking over our session
        status = StatusWriter(status_path(self.cfg.state_dir), self.mqtt, self.cfg.broker.url)
        self.on_stop.append(status.start().stop)
        for cam in self.cameras.values():
            cam.start()
        engine = self._load_initial_engine()
        if engine is not None:
            self.pipeline.swap_engine(engine)
        self.pipeline.start()
        self._start_updater()  # [updater] worker thread, announcement and command subscriptions
        self._start_keyring()  # the root-signed keyring on {prefix}/keyring (docs/KEYS.md)
        self.shadow = attach_shadow(self)  # a candidate beside the live model on sampled frames (docs/SHADOW.md)
        self.capture = attach_capture(self)  # hard examples kept and uploaded on request (docs/FLYWHEEL.md)
        self.telemetry.start()  # [telemetry]
        self.publish_state(force=True)
        return self

    def stop(self) -> None:
        """Stop every thread; publish "stopped" and "offline" (retained) if the broker is reachable."""
        if not self._started:
            return
        self._stop.set()
        for fn in self.on_stop:
            _safe(fn)
        if self.updater is not None:  # [updater]
            self.updater.stop()
        self.telemetry.stop()  # [telemetry] STOPPING=1, publisher thread
        self.pipeline.stop()
        for cam in self.cameras.values():
            cam.stop()
        self.publish_state(status="stopped", force=True)
        self.mqtt.stop()
        engine = self.pipeline.engine
        if isinstance(engine, Engine | PoolEngine):
            engine.close()
        self._started = False

    def run(self, install_signal_handlers: bool = True) -> int:
        """Start and serve until SIGTERM/SIGINT or request_stop(); returns the exit code (0)."""
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
            signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        self.start()
        try:
            while not self._stop.wait(0.5):
                self.publish_state()  # only sends on change or when state_interval_s has passed
                self._check_ready()
        finally:
            self.stop()
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------------------------ models

    def _load_keyring(self) -> Keyring | None:
        d = self.cfg.trusted_keys_dir
        if not d.is_dir():
            log.warning("trusted keys dir %s missing: bundles cannot be verified", d)
            return None
        try:
            # the provisioned keys, or the newer keyring installed over MQTT if it chains from them
            return load_trust(d, self.cfg.state_dir / "keyring")
        except SignatureError as exc:
            log.error("cannot read trusted keys: %s", exc)
            return None

    def _start_keyring(self) -> None:
        from agent.service.keyring_link import KeyringLink, KeyringStatus

        if self.keyring is None:
            return

        def report(status: KeyringStatus) -> None:
            self.mqtt.publish(self.topics.keyring_status(self.node), status.model_dump_json(), qos=1, retain=True)

        self.keyring_link = KeyringLink(self.cfg.state_dir / "keyring", self.keyring, report)
        self.mqtt.subscribe(self.topics.keyring(), self.keyring_link.on_message, qos=1)

    def _load_initial_engine(self) -> Engine | PoolEngine | None:
        """The model to run at start: the model store's committed bundle (crash rule applied), else the
        configured bundle directory (which then seeds the store)."""
        if self.updater is not None:  # [updater]
            engine = self._load_committed_engine()
            if engine is not None:
                return engine
        path = self.cfg.bundle
        if path is None:
            self.error = "no model yet (waiting for an update)"
            return None
        return self.load_bundle(path)

    def load_bundle(self, path: Path) -> Engine | PoolEngine | None:
        """Verify and load a bundle directory; on failure set self.error and return None."""
        if self.keyring is None:
            self.error = f"cannot verify {path}: no trusted keys in {self.cfg.trusted_keys_dir}"
            return None
        try:
            bundle = Bundle.load(path, self.keyring.installed() if self.keyring else None)  # the node's own model
            engine = self.make_engine(bundle)
        except (BundleError, SignatureError, EngineError) as exc:
            self.error = f"model {path} not loaded: {exc}"
            log.error("%s", self.error)
            return None
        self.bundle = bundle
        self.error = None
        return engine

    # [updater] ---------------------------------------------------------------------------------------
    def _make_updater(self) -> Updater | None:
        if not self.cfg.updates.enabled or self.keyring is None:
            return None
        # The keyring lets the store rebuild a lost state.json from the verified bundles it holds.
        store = ModelStore(self.cfg.state_dir / "models", keep=self.cfg.updates.keep_versions, keyring=self.keyring)
        return Updater(
            node=self.node, groups=list(self.cfg.groups), topics=self.topics, store=store, keyring=self.keyring,
            config=self.cfg.updates, load_engine=self.make_engine, swap_engine=self.install_engine,
            publish=lambda topic, payload, retain: self.mqtt.publish(topic, payload, qos=1, retain=retain),
            on_change=lambda: self.publish_state(force=True),
        )

    def _load_committed_engine(self) -> Engine | PoolEngine | None:
        assert self.updater is not None
        try:
            bundle = self.updater.startup(fallback=self.cfg.bundle)
        except (StoreError, BundleError, SignatureError) as exc:
            self.error = f"model store unusable: {exc}"
            log.error("%s", self.error)
            return None
        if bundle is None:
            return None
        try:
            engine = self.make_engine(bundle)
        except EngineError as exc:
            self.error = f"committed model v{bundle.manifest.version} not loaded: {exc}"
            log.error("%s", self.error)
            return None
        self.updater.set_running(engine, bundle)
        self.bundle, self.error = bundle, None
        return engine

    def _start_updater(self) -> None:
        from agent.service.commands import CommandsHandler

        u = self.updater
        if u is None:
            return
        u.start()

        def on_announcement(msg: Any) -> None:
            if msg.payload:  # an empty retained payload clears a topic: nothing to do
                u.on_announcement(msg.payload, msg.topic)

        for topic in self.topics.announce_subscriptions(self.node, list(self.cfg.groups)):
            self.mqtt.subscribe(topic, on_announcement)

        def respond(topic: str, payload: bytes, correlation: bytes | None) -> None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                props.CorrelationData = correlation
            self.mqtt.request(topic, payload, properties=props)

        commands = CommandsHandler(self.node, self.topics, u, respond)
        self.mqtt.subscribe(commands.topic, commands.on_message)

    def _feed_updater(self, result: FrameResult) -> None:
        u = self.updater
        if u is None:
            return
        if result.engine is not None and result.engine is u.trial_engine and result.stats.error is None:
            # Raw outputs of this frame for the NaN/degenerate checks, only while a trial runs; a copy of
            # the record, so the other frame hooks never see them.
            backend = getattr(result.engine, "backend", None)
            outputs = None
            with contextlib.suppress(Exception):
                outputs = backend.get_outputs() if backend is not None else None
            if outputs is not None:
                result = dataclasses.replace(result, outputs=outputs)
        u.on_frame(result)

    def make_engine(self, bundle: Bundle) -> Engine | PoolEngine:
        """Engine factory (the updater's load_engine): decodes with the settings every camera can filter from."""
        cfg = self.cfg if self.engine_detect == self.cfg.detect else self.cfg.model_copy(
            update={"detect": self.engine_detect})
        return load_engine(bundle, cfg)  # a TPU pool (several devices) is one engine to the updater

    def install_engine(self, engine: Any) -> Any:
        """Hot-swap between two frames (the updater's swap_engine); returns the previous engine."""
        old = self.pipeline.swap_engine(engine)
        if engine is not None and hasattr(engine, "bundle"):
            self.bundle = engine.bundle
            self.error = None
        self.publish_state(force=True)
        return old

    # ------------------------------------------------------------------------------------------ state

    def node_state(self, status: str | None = None) -> NodeState:
        engine = self.pipeline.engine
        reason: str | None = None
        if status is None:
            if isinstance(engine, Engine | PoolEngine):
                status = engine.state
                reason = engine.degraded_reason
            else:
                status = "error" if self.error and "waiting" not in self.error else "starting"
                reason = self.error
            for name, cam in self.cameras.items():
                if cam.state not in (CameraState.STREAMING, CameraState.STARTING, CameraState.CONNECTING):
                    label = "camera" if len(self.cameras) == 1 else f"camera {name}"
                    cam_reason = f"{label} {cam.state.value}: {cam.last_error or ''}".strip(": ")
                    reason = f"{reason}; {cam_reason}" if reason else cam_reason
        model = None
        if engine is not None:
            model = ModelRef(name=engine.model_name, version=engine.model_version)
        return NodeState(
            node=self.node,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            agent_version=__version__,
            backend=getattr(engine, "backend_name", None),
            device=getattr(engine, "device", None),
            model=model,
            previous_model=self.updater.previous_model() if self.updater else None,  # [updater]
            last_update=self.updater.last_result() if self.updater else None,  # [updater]
            camera=self.camera.state.value,
            groups=list(self.cfg.groups),
        )

    def publish_state(self, status: str | None = None, force: bool = False) -> NodeState:
        """Publish the retained NodeState when it changed, when forced, or every state_interval_s."""
        st = self.node_state(status)
        key = (st.status, st.reason, st.backend, st.device, st.model, st.camera)
        now = time.monotonic()
        with self._state_lock:
            if not force and key == self._last_state_key and now - self._last_state_at < self.cfg.state_interval_s:
                return st
            self._last_state_key, self._last_state_at = key, now
        self.telemetry.update_status(st)  # [telemetry] STATUS= line for systemctl status, telemetry fields
        self.mqtt.publish(self.topics.state(self.node), st.model_dump_json(), qos=1, retain=True)
        return st

    def _check_ready(self) -> None:
        if self.ready.is_set() or not self.mqtt.connected or self.pipeline.engine is None:
            return
        self.ready.set()
        self.telemetry.ready(self.node_state())  # [telemetry] sd_notify READY=1: broker connected, model loaded
        for fn in self.on_ready:
            _safe(fn)

    def stats(self) -> dict[str, Any]:
        """Counters and the latest per-frame timings, for telemetry and `check`."""
        p, c, m = self.pipeline, self.camera, self.mqtt
        last = p.last_stats
        return {
            "frames": p.counters.frames,
            "errors": p.counters.errors,
            "dropped": c.dropped,
            "publish_dropped": p.counters.publish_dropped,
            "camera": c.status(),
            "cameras": {f.name: f.status() for f in p.feeds},
            "camera_reconnects": c.reconnects,
            "mqtt_reconnects": m.counters.reconnects,
            "mqtt_dropped": m.counters.dropped,
            "detections_published": self.publisher.counters.messages,
            "last_frame": None if last is None else last.__dict__,
        }

    # ------------------------------------------------------------------------------------------ hooks

    def _on_frame(self, result: FrameResult) -> None:
        # Runs on the inference thread: a backend change (fallback/recovery) is published from the
        # service loop within 0.5 s; nothing slow here.
        self.telemetry.on_frame(result)  # [telemetry] per-stage latency histograms, rates
        self._feed_updater(result)  # [updater] trial monitor (errors, NaN/degenerate outputs, latency)

    def _on_tick(self) -> None:
        # Every inference-loop turn, frames or not.
        self.telemetry.on_tick()  # [telemetry] WATCHDOG=1 (rate-limited): a hung invoke stops the pings

    def _on_connect(self) -> None:
        # paho's thread: only flag; the service loop publishes (retained state is replayed by MqttClient).
        with self._state_lock:
            self._last_state_key = None


def _workers(cfg: AgentConfig) -> int:
    """One inference loop per device of the TPU pool (one without a pool)."""
    return max(1, len(pool_devices(cfg)))


def _safe(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("callback %r failed", fn)
