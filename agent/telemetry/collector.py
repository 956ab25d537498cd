"""Fleet telemetry: bounded latency histograms per stage, rates, process stats, and the publisher thread.

The pipeline calls `TelemetryCollector.record_frame({stage: seconds})` once per frame and `count(...)` for
events; a `TelemetryPublisher` thread turns a window into a `Telemetry` message every `interval_s`.
Memory is bounded whatever the frame rate: a histogram is a fixed array of log-spaced buckets.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.protocol.telemetry import (
    STAGES,
    Counters,
    MqttLink,
    PowerInfo,
    Rates,
    StageLatency,
    Telemetry,
    Temperatures,
    ThrottleInfo,
)

log = logging.getLogger(__name__)


class LatencyHistogram:
    """Log-bucketed histogram of durations (ms) with percentiles; O(1) record, fixed memory.

    Buckets grow by `growth` (1 % by default) from `lo_ms` to `hi_ms`, so a percentile is within
    ±0.5 % of the true sample value (reported as the bucket's geometric centre, clamped to the
    observed min/max). Values outside the range land in the first/last bucket.
    """

    def __init__(self, lo_ms: float = 0.01, hi_ms: float = 120_000.0, growth: float = 1.01) -> None:
        if not (0 < lo_ms < hi_ms and growth > 1):
            raise ValueError("need 0 < lo_ms < hi_ms and growth > 1")
        self._log_lo = math.log(lo_ms)
        self._log_g = math.log(growth)
        self._n = int(math.ceil((math.log(hi_ms) - self._log_lo) / self._log_g)) + 1
        self._counts = np.zeros(self._n, dtype=np.int64)
        self._lock = threading.Lock()
        self._reset_stats()

    def _reset_stats(self) -> None:
        self.count = 0
        self.total_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = 0.0

    def _index(self, ms: float) -> int:
        if ms <= 0:
            return 0
        i = int((math.log(ms) - self._log_lo) / self._log_g)
        return min(max(i, 0), self._n - 1)

    def record(self, ms: float) -> None:
        if not math.isfinite(ms):
            return
        i = self._index(ms)
        with self._lock:
            self._counts[i] += 1
            self.count += 1
            self.total_ms += ms
            self.min_ms = min(self.min_ms, ms)
            self.max_ms = max(self.max_ms, ms)

    def _centre(self, i: int) -> float:
        return math.exp(self._log_lo + (i + 0.5) * self._log_g)

    def percentiles(self, qs: tuple[float, ...] = (50, 95, 99)) -> list[float | None]:
        with self._lock:
            return self._percentiles_locked(qs)

    def _percentiles_locked(self, qs: tuple[float, ...]) -> list[float | None]:
        if self.count == 0:
            return [None for _ in qs]
        cum = np.cumsum(self._counts)
        out: list[float | None] = []
        for q in qs:
            # nearest-rank definition: the smallest value with at least q % of samples at or below it
            rank = max(1, math.ceil(q / 100.0 * self.count))
            i = int(np.searchsorted(cum, rank))
            out.append(min(max(self._centre(i), self.min_ms), self.max_ms))
        return out

    def summary(self, reset: bool = False) -> StageLatency:
        with self._lock:
            p50, p95, p99 = self._percentiles_locked((50, 95, 99))
            s = StageLatency(
                count=self.count,
                p50_ms=_r(p50),
                p95_ms=_r(p95),
                p99_ms=_r(p99),
                mean_ms=_r(self.total_ms / self.count) if self.count else None,
                max_ms=_r(self.max_ms) if self.count else None,
            )
            if reset:
                self._counts[:] = 0
                self._reset_stats()
            return s


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


class ProcessStats:
    """CPU % (of one core), RSS and uptime of this process; psutil when present, else /proc."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last_wall = time.monotonic()
        self._last_cpu = self._cpu_seconds()
        try:
            import psutil

            self._proc: Any = psutil.Process()
        except ImportError:  # psutil is in the agent extra, but keep working without it
            self._proc = None

    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def cpu_percent(self) -> float:
        now, cpu = time.monotonic(), self._cpu_seconds()
        dt = now - self._last_wall
        pct = 100.0 * (cpu - self._last_cpu) / dt if dt > 0 else 0.0
        self._last_wall, self._last_cpu = now, cpu
        return round(pct, 1)

    def rss_mb(self) -> float | None:
        if self._proc is not None:
            return round(self._proc.memory_info().rss / 1e6, 1)
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
            return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
        except (OSError, ValueError, IndexError):
            return None

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started, 1)


@dataclass
class NodeInfo:
    """What the daemon knows about itself; updated by the service as it changes."""

    status: str | None = "starting"
    backend: str | None = None
    device: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    camera_state: str | None = None


@dataclass
class _Window:
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=dict)


class TelemetryCollector:
    """Thread-safe sink for per-frame timings and events; `snapshot()` closes a window."""

    RATE_EVENTS = ("frames_captured", "frames_inferred", "frames_dropped", "inference_errors")

    def __init__(
        self,
        node: str,
        agent_version: str,
        *,
        power: Callable[[], PowerInfo | None] | None = None,
        temperatures: Callable[[], Temperatures] | None = None,
        throttle: Callable[[], ThrottleInfo | None] | None = None,
        mqtt_stats: Callable[[], MqttLink] | None = None,
        camera_totals: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.node = node
        self.agent_version = agent_version
        self.info = NodeInfo()
        self.hist: dict[str, LatencyHistogram] = {s: LatencyHistogram() for s in STAGES}
        self.totals: dict[str, int] = dict.fromkeys(self.RATE_EVENTS, 0)
        self._window = _Window()
        self._lock = threading.Lock()
        self.proc = ProcessStats()
        self.power = power
        self.temperatures = temperatures
        self.throttle = throttle
        self.mqtt_stats = mqtt_stats
        #: cumulative (frames captured, frames dropped) from the camera; windows use the deltas
        self.camera_totals = camera_totals
        self._cam_last = (0, 0)
        #: invoke time accumulated in the window: the Coral's duty cycle for the power estimate
        self._busy_s = 0.0

    # -- recording (called from the pipeline threads) --------------------------------------------
    def record_stage(self, stage: str, seconds: float) -> None:
        h = self.hist.get(stage)
        if h is None:
            h = self.hist.setdefault(stage, LatencyHistogram())
        h.record(seconds * 1000.0)
        if stage == "invoke":
            with self._lock:
                self._busy_s += seconds

    def record_frame(self, stages: Mapping[str, float]) -> None:
        """One inferred frame: {stage: seconds}. Counts it as inferred."""
        for stage, sec in stages.items():
            self.record_stage(stage, sec)
        self.count("frames_inferred")

    def count(self, event: str, n: int = 1) -> None:
        with self._lock:
            self.totals[event] = self.totals.get(event, 0) + n
            self._window.counts[event] = self._window.counts.get(event, 0) + n

    def duty_cycle(self) -> float:
        """Fraction of the current window the accelerator spent in invoke (0..1)."""
        with self._lock:
            dt = time.monotonic() - self._window.started
            return min(1.0, self._busy_s / dt) if dt > 0 else 0.0

    # -- reading (publisher thread) ---------------------------------------------------------------
    def snapshot(self, reset: bool = True) -> Telemetry:
        now = time.monotonic()
        with self._lock:
            window = self._window
            dt = max(now - window.started, 1e-6)
            wc = dict(window.counts)
            if reset:
                self._window = _Window(started=now)
                self._busy_s = 0.0
        if self.camera_totals is not None:
            cam = _safe(self.camera_totals)
            if cam is not None:
                captured, dropped = cam
                wc["frames_captured"] = captured - self._cam_last[0]
                wc["frames_dropped"] = dropped - self._cam_last[1]
                self.totals["frames_captured"], self.totals["frames_dropped"] = captured, dropped
                if reset:
                    self._cam_last = (captured, dropped)
        latency = {s: h.summary(reset=reset) for s, h in self.hist.items()}
        rates = Rates(
            camera_fps=round(wc.get("frames_captured", 0) / dt, 2),
            inference_fps=round(wc.get("frames_inferred", 0) / dt, 2),
            dropped_fps=round(wc.get("frames_dropped", 0) / dt, 2),
        )
        power = _safe(self.power)
        if power is not None and power.watts is not None and rates.inference_fps > 0:
            # energy per inference = average power / inference rate (J → mJ)
            power.energy_per_inference_mj = round(power.watts / rates.inference_fps * 1000.0, 3)
        temps = _safe(self.temperatures) or Temperatures()
        info = self.info
        return Telemetry(
            node=self.node,
            interval_s=round(dt, 3),
            agent_version=self.agent_version,
            uptime_s=self.proc.uptime_s(),
            status=info.status,  # type: ignore[arg-type]
            backend=info.backend,
            device=info.device,
            model_name=info.model_name,
            model_version=info.model_version,
            camera_state=info.camera_state,
            latency=latency,
            rates=rates,
            counters=Counters(**{k: self.totals.get(k, 0) for k in self.RATE_EVENTS}),
            cpu_percent=self.proc.cpu_percent(),
            rss_mb=self.proc.rss_mb(),
            power=power,
            temperatures=temps,
            throttle=_safe(self.throttle),
            mqtt=_safe(self.mqtt_stats) or MqttLink(),
        )


def _safe(fn: Callable[[], Any] | None) -> Any:
    """Sensor readers must never take telemetry (or inference) down: log and report nothing."""
    if fn is None:
        return None
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a broken sensor is reported, not fatal
        log.warning("telemetry source %s failed: %s", getattr(fn, "__qualname__", fn), exc)
        return None


class TelemetryPublisher(threading.Thread):
    """Every `interval_s`, snapshot the collector and hand the JSON to `publish(payload_bytes)`.

    `publish` is the MQTT wrapper's non-blocking enqueue: while the broker is away it buffers up to its
    bound (oldest dropped first), so this thread never blocks on the network.
    """

    def __init__(self, collector: TelemetryCollector, publish: Callable[[bytes], Any], interval_s: float) -> None:
        super().__init__(name="telemetry", daemon=True)
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.collector = collector
        self.publish = publish
        self.interval_s = interval_s
        self._stop_evt = threading.Event()
        self.published = 0
        self.last: Telemetry | None = None

    def publish_now(self) -> Telemetry:
        msg = self.collector.snapshot(reset=True)
        self.last = msg
        self.publish(msg.model_dump_json(exclude_none=False).encode())
        self.published += 1
        return msg

    def run(self) -> None:
        # first window starts now; the first message comes after one interval
        self.collector.snapshot(reset=True)
        while not self._stop_evt.wait(self.interval_s):
            try:
                self.publish_now()
            except Exception:  # noqa: BLE001 - keep publishing whatever one window did
                log.exception("telemetry publish failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout)


# ------------------------------------------------------------------------------------------ daemon glue
class TelemetryRuntime:
    """Everything issue 7 adds to the daemon, behind four calls the service makes:

        rt = TelemetryRuntime(cfg, mqtt, topics, version, camera=camera, node_state=service.node_state)
        pipeline.add_frame_hook(rt.on_frame); pipeline.add_tick_hook(rt.on_tick)
        rt.start()            … rt.ready(state) once broker + model are up … rt.update_status(state) … rt.stop()

    on_tick runs on the inference thread every loop turn (frames or not): it is the WATCHDOG=1 source, so a
    hung invoke — the only thing that stops that loop from turning — stops the pings.
    """

    def __init__(
        self,
        cfg: Any,
        mqtt: Any,
        topics: Any,
        agent_version: str,
        *,
        camera: Any = None,
        notifier: Any = None,
    ) -> None:
        from agent.service.sdnotify import SdNotifier, WatchdogPinger
        from agent.telemetry.power import build_power_monitor
        from agent.telemetry.thermal import ThermalMonitor

        self.cfg = cfg
        self.tcfg = cfg.telemetry
        self.mqtt = mqtt
        self.topics = topics
        self.node = cfg.node_id
        self.agent_version = agent_version
        self.camera = camera
        self.thermal = ThermalMonitor()
        self.collector = TelemetryCollector(
            self.node,
            agent_version,
            temperatures=self.thermal.temperatures,
            throttle=self.thermal.throttle,
            mqtt_stats=self._mqtt_stats,
            camera_totals=(lambda: (camera.frames, camera.dropped)) if camera is not None else None,
        )
        self.power = build_power_monitor(
            self.collector.duty_cycle,
            lambda: (self.collector.info.backend or "").startswith("edgetpu"),
            source=self.tcfg.power_source,
            baseline_w=self.tcfg.baseline_w,
            tpu_max_w=self.tcfg.tpu_max_w,
        )
        self.collector.power = self.power.read
        self.publisher = TelemetryPublisher(self.collector, self._publish, self.tcfg.interval_s)
        self.notifier = notifier if notifier is not None else SdNotifier()
        self.watchdog = WatchdogPinger(self.notifier, self.tcfg.watchdog_interval_s)
        self._last_status: str | None = None
        self._discovery_sent = False
        if self.tcfg.hass_discovery:
            mqtt.add_on_connect(self.publish_discovery)

    # -- MQTT -------------------------------------------------------------------------------------------
    def _publish(self, payload: bytes) -> None:
        # non-retained, QoS 0; buffered (bounded, oldest dropped) while the broker is away
        self.mqtt.publish(self.topics.telemetry(self.node), payload, qos=0, buffer=True)

    def _mqtt_stats(self) -> MqttLink:
        c = self.mqtt.counters
        return MqttLink(reconnects=c.reconnects, dropped_messages=c.dropped + getattr(c, "buffer_dropped", 0),
                        queued_messages=getattr(self.mqtt, "buffered", 0), denied_publishes=getattr(c, "denied", 0))

    def publish_discovery(self) -> None:
        from agent.telemetry.hass import publish_discovery

        # once: the MQTT client remembers retained messages and replays them after every reconnect
        if self._discovery_sent:
            return
        self._discovery_sent = True

        n = publish_discovery(lambda t, p, r: self.mqtt.publish(t, p, qos=1, retain=r), self.topics, self.node,
                              self.agent_version, self.tcfg.hass_prefix)
        log.debug("published %d Home Assistant discovery configs", n)

    # -- hooks --------------------------------------------------------------------------------------------
    def on_frame(self, result: Any) -> None:
        st = result.stats
        info = self.collector.info
        info.backend, info.model_version = st.backend, st.model_version
        info.model_name = result.model_name
        if st.error:
            self.collector.count("inference_errors")
            self.collector.count("frames_inferred")
            return
        self.collector.record_frame({
            "capture_wait": st.capture_wait_s,
            "preprocess": st.preprocess_s,
            "invoke": st.invoke_s,
            "postprocess": st.postprocess_s,
            "end_to_end": st.end_to_end_s,
        })

    def on_tick(self) -> None:
        self.watchdog.kick()

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.tcfg.enabled:
            self.publisher.start()

    def ready(self, state: Any) -> None:
        """Broker connected and model loaded: READY=1 with a STATUS line."""
        self.update_status(state, force=True, ready=True)

    def update_status(self, state: Any, force: bool = False, ready: bool = False) -> None:
        info = self.collector.info
        info.status, info.backend, info.device = state.status, state.backend, state.device
        info.camera_state = state.camera
        if state.model is not None:
            info.model_name, info.model_version = state.model.name, state.model.version
        text = status_line(state)
        if ready:
            self.notifier.ready(text)
            self._last_status = text
        elif force or text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    def stop(self) -> None:
        self.notifier.stopping("stopping")
        self.publisher.stop()


def status_line(state: Any) -> str:
    """One line for `systemctl status`: what runs, where, and what is wrong."""
    model = f"{state.model.name} v{state.model.version}" if state.model is not None else "no model"
    where = f" on {state.backend}" + (f" ({state.device})" if state.device else "") if state.backend else ""
    line = f"{state.status}: {model}{where}; camera {state.camera or '?'}"
    return f"{line}; {state.reason}" if state.reason else line
