"""Telemetry's glue to the daemon: collector + publisher + power/thermal readers + systemd notifications.

The service makes four calls (construct, hooks, start/ready/update_status, stop); everything the telemetry
issue adds to the daemon lives behind them.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.protocol.telemetry import MqttLink
from agent.telemetry.collector import TelemetryCollector
from agent.telemetry.publisher import TelemetryPublisher

log = logging.getLogger(__name__)


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
        feeds: Any = None,
    ) -> None:
        from agent.system.sdnotify import SdNotifier, WatchdogPinger
        from agent.telemetry.cameras import CameraWindows
        from agent.telemetry.power import build_power_monitor
        from agent.telemetry.thermal import ThermalMonitor

        self.cfg = cfg
        self.tcfg = cfg.telemetry
        self.mqtt = mqtt
        self.topics = topics
        self.node = cfg.node_id
        self.agent_version = agent_version
        self.camera = camera
        self.feeds = list(feeds or [])
        self.camera_windows = CameraWindows(self.feeds)
        cams = [f.camera for f in self.feeds] or ([camera] if camera is not None else [])
        self.thermal = ThermalMonitor()
        self.collector = TelemetryCollector(
            self.node,
            agent_version,
            temperatures=self.thermal.temperatures,
            throttle=self.thermal.throttle,
            mqtt_stats=self._mqtt_stats,
            camera_totals=(lambda: (sum(c.frames for c in cams), sum(c.dropped for c in cams))) if cams else None,
            cameras=self.camera_windows.snapshot if self.feeds else None,
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
                              self.agent_version, self.tcfg.hass_prefix, cameras=[f.name for f in self.feeds])
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
        if self.feeds:
            self.camera_windows.record(result.camera, st.preprocess_s + st.invoke_s + st.postprocess_s,
                                       st.end_to_end_s)
        self.collector.record_frame({
            "capture_wait": st.capture_wait_s,
            "preprocess": st.preprocess_s,
            "invoke": st.invoke_s,
            "postprocess": st.postprocess_s,
            "end_to_end": st.end_to_end_s,
        }, detections=result.detections, model_version=st.model_version)

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
