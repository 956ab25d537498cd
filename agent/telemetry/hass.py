"""Home Assistant MQTT discovery: every node appears as a device with sensors and a model `update` entity.

Published retained under `{discovery_prefix}/{component}/{node_object_id}/{object_id}/config` when the agent
connects. Sensors read the node's telemetry/state topics through `value_template`s built from one field path
each (`Entity.field`), and share the node's LWT availability topic, so a stock dashboard shows an offline
node as unavailable. See docs/TELEMETRY.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent.protocol.messages import Availability
from agent.protocol.topics import Topics

DISCOVERY_PREFIX = "homeassistant"
Source = Literal["telemetry", "state", "update"]


@dataclass(frozen=True)
class Entity:
    object_id: str
    name: str
    source: Source
    field: str  # dotted path into the JSON payload, e.g. "latency.invoke.p95_ms"
    component: Literal["sensor", "binary_sensor"] = "sensor"
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = "measurement"
    icon: str | None = None
    entity_category: str | None = None
    options: tuple[str, ...] | None = None
    precision: int | None = None
    parts: tuple[str, ...] | None = None  # the field path when a key holds a dot (camera names may)

    def value_template(self) -> str:
        # Guard every optional parent so a missing sensor (no TPU temperature, no vcgencmd) renders as
        # unknown instead of a template error in Home Assistant's log.
        parts = [p if p.isidentifier() else f"[{json.dumps(p)}]" for p in (self.parts or self.field.split("."))]
        guards = [_path(parts[:i]) for i in range(1, len(parts))]
        expr = _path(parts)
        if self.component == "binary_sensor":
            cond = " and ".join([*guards, expr])
            return "{{ 'ON' if (" + cond + ") else 'OFF' }}"
        if not guards:
            return "{{ " + expr + " if " + expr + " is not none else 'unknown' }}"
        cond = " and ".join(guards) + f" and {expr} is not none"
        return "{{ " + expr + " if (" + cond + ") else 'unknown' }}"


def _path(parts: list[str]) -> str:
    return "value_json" + "".join(p if p.startswith("[") else f".{p}" for p in parts)


def camera_entities(camera: str) -> tuple[Entity, ...]:
    """One camera's sensors, read from `cameras.<name>` of the node's telemetry (issue 16)."""
    oid, label = f"camera_{_object_id(camera)}", f"Camera {camera}"

    def e(leaf: str, name: str, *path: str, **kw: Any) -> Entity:
        return Entity(f"{oid}_{leaf}", f"{label} {name}", "telemetry", ".".join(("cameras", camera, *path)),
                      parts=("cameras", camera, *path), **kw)

    return (
        e("fps", "inference rate", "inference_fps", unit="fps", precision=1, icon="mdi:speedometer"),
        e("camera_fps", "frame rate", "camera_fps", unit="fps", precision=1, icon="mdi:cctv"),
        e("dropped_fps", "dropped frames", "dropped_fps", unit="fps", precision=1, icon="mdi:delete-clock"),
        e("latency_p95", "latency p95", "latency", "p95_ms", unit="ms", device_class="duration", precision=1,
          icon="mdi:timer-outline"),
        e("state", "state", "state", state_class=None, icon="mdi:cctv", entity_category="diagnostic"),
        e("device", "device", "device", state_class=None, icon="mdi:chip", entity_category="diagnostic"),
    )


def _lat(stage: str, q: str, name: str) -> Entity:
    return Entity(f"latency_{stage}_{q}", name, "telemetry", f"latency.{stage}.{q}_ms", unit="ms",
                  device_class="duration", precision=1, icon="mdi:timer-outline")


ENTITIES: tuple[Entity, ...] = (
    Entity("inference_fps", "Inference rate", "telemetry", "rates.inference_fps", unit="fps",
           icon="mdi:speedometer", precision=1),
    Entity("camera_fps", "Camera rate", "telemetry", "rates.camera_fps", unit="fps", icon="mdi:cctv", precision=1),
    Entity("dropped_fps", "Dropped frames", "telemetry", "rates.dropped_fps", unit="fps",
           icon="mdi:image-broken-variant", precision=1),
    _lat("invoke", "p50", "Invoke latency p50"),
    _lat("invoke", "p95", "Invoke latency p95"),
    _lat("invoke", "p99", "Invoke latency p99"),
    _lat("end_to_end", "p50", "End-to-end latency p50"),
    _lat("end_to_end", "p95", "End-to-end latency p95"),
    Entity("power", "Power", "telemetry", "power.watts", unit="W", device_class="power", precision=2),
    Entity("power_estimated", "Power is estimated", "telemetry", "power.estimated", component="binary_sensor",
           state_class=None, icon="mdi:calculator-variant", entity_category="diagnostic"),
    Entity("energy_per_inference", "Energy per inference", "telemetry", "power.energy_per_inference_mj",
           unit="mJ", icon="mdi:lightning-bolt", precision=1),
    Entity("cpu_temperature", "CPU temperature", "telemetry", "temperatures.cpu_c", unit="°C",
           device_class="temperature", precision=1),
    Entity("tpu_temperature", "Edge TPU temperature", "telemetry", "temperatures.tpu_max_c", unit="°C",
           device_class="temperature", precision=1),
    Entity("throttled", "Throttled", "telemetry", "throttle.throttled", component="binary_sensor",
           device_class="problem", state_class=None),
    Entity("under_voltage", "Under-voltage", "telemetry", "throttle.under_voltage", component="binary_sensor",
           device_class="problem", state_class=None),
    Entity("cpu_percent", "Agent CPU", "telemetry", "cpu_percent", unit="%", icon="mdi:cpu-64-bit",
           precision=0, entity_category="diagnostic"),
    Entity("rss", "Agent memory", "telemetry", "rss_mb", unit="MB", device_class="data_size", precision=0,
           entity_category="diagnostic"),
    Entity("uptime", "Agent uptime", "telemetry", "uptime_s", unit="s", device_class="duration",
           state_class="total_increasing", entity_category="diagnostic"),
    Entity("mqtt_reconnects", "MQTT reconnects", "telemetry", "mqtt.reconnects", state_class="total_increasing",
           icon="mdi:lan-disconnect", entity_category="diagnostic"),
    Entity("frames_inferred", "Frames inferred", "telemetry", "counters.frames_inferred",
           state_class="total_increasing", icon="mdi:counter"),
    Entity("backend", "Backend", "telemetry", "backend", state_class=None, icon="mdi:chip"),
    Entity("status", "Status", "state", "status", device_class="enum", state_class=None,
           options=("starting", "running", "degraded", "error", "stopped", "unknown")),
    Entity("model_version", "Model version", "state", "model.version", state_class=None, icon="mdi:brain"),
)

#: update states meaning "a newer version is on its way"; otherwise latest = what runs
_IN_FLIGHT = ("announced", "verifying", "downloading", "activating", "trial")


def _device(node: str, agent_version: str) -> dict[str, Any]:
    return {
        "identifiers": [f"edgefleet_{node}"],
        "name": f"Edge node {node}",
        "manufacturer": "edge-fleet",
        "model": "Raspberry Pi + Coral Edge TPU agent",
        "sw_version": agent_version,
    }


def _object_id(node: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", node)


def state_topics(topics: Topics, node: str) -> dict[Source, str]:
    return {"telemetry": topics.telemetry(node), "state": topics.state(node), "update": topics.update(node)}


def discovery_messages(
    topics: Topics, node: str, agent_version: str, prefix: str = DISCOVERY_PREFIX, cameras: Sequence[str] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """(config topic, payload) for every entity of this node (and of each of its `cameras`); publish retained."""
    src = state_topics(topics, node)
    oid = _object_id(node)
    device = _device(node, agent_version)
    availability = [{"topic": topics.availability(node), "payload_available": Availability.ONLINE.value,
                     "payload_not_available": Availability.OFFLINE.value}]
    out: list[tuple[str, dict[str, Any]]] = []
    for e in (*ENTITIES, *(x for c in cameras for x in camera_entities(c))):
        cfg: dict[str, Any] = {
            "name": e.name,
            "unique_id": f"edgefleet_{oid}_{e.object_id}",
            "state_topic": src[e.source],
            "value_template": e.value_template(),
            "availability": availability,
            "device": device,
        }
        for key, val in (("unit_of_measurement", e.unit), ("device_class", e.device_class),
                         ("state_class", e.state_class), ("icon", e.icon), ("entity_category", e.entity_category),
                         ("suggested_display_precision", e.precision)):
            if val is not None:
                cfg[key] = val
        if e.options:
            cfg["options"] = list(e.options)
        if e.component == "binary_sensor":
            cfg["payload_on"], cfg["payload_off"] = "ON", "OFF"
        out.append((f"{prefix}/{e.component}/{oid}/{e.object_id}/config", cfg))
    # The model as an `update` entity: installed = what the node runs (state topic), latest = the version an
    # update in flight is bringing, else what runs (so a rolled-back v4 does not look "available").
    out.append((f"{prefix}/update/{oid}/model/config", {
        "name": "Detector model",
        "unique_id": f"edgefleet_{oid}_model",
        "state_topic": src["state"],
        "value_template": "{{ value_json.model.version | string if value_json.model else 'none' }}",
        "latest_version_topic": src["update"],
        "latest_version_template": "{{ value_json.version | string if value_json.state in "
        + json.dumps(list(_IN_FLIGHT)) + " and value_json.version is not none else "
        "(value_json.running_version | string if value_json.running_version is not none else "
        "value_json.version | string) }}",
        "title": "Edge fleet detector",
        "entity_category": "diagnostic",
        "availability": availability,
        "device": device,
    }))
    return out


def entity_fields(topics: Topics, node: str) -> list[tuple[str, str, str]]:
    """(entity object_id, state topic, field path) for every sensor: what a payload must carry."""
    src = state_topics(topics, node)
    fields = [(e.object_id, src[e.source], e.field) for e in ENTITIES]
    fields += [("model", src["state"], "model.version"), ("model", src["update"], "version"),
               ("model", src["update"], "state"), ("model", src["update"], "running_version")]
    return fields


def publish_discovery(
    publish: Callable[[str, bytes, bool], Any], topics: Topics, node: str, agent_version: str,
    prefix: str = DISCOVERY_PREFIX,
    cameras: Sequence[str] = (),
) -> int:
    """publish(topic, payload, retain) for every config; returns how many were sent."""
    msgs = discovery_messages(topics, node, agent_version, prefix, cameras)
    for topic, cfg in msgs:
        publish(topic, json.dumps(cfg, separators=(",", ":")).encode(), True)
    return len(msgs)


def removal_messages(node: str, prefix: str = DISCOVERY_PREFIX, cameras: Sequence[str] = ()) -> Iterable[str]:
    """Config topics to clear (empty retained payload) when a node is decommissioned."""
    oid = _object_id(node)
    for e in (*ENTITIES, *(x for c in cameras for x in camera_entities(c))):
        yield f"{prefix}/{e.component}/{oid}/{e.object_id}/config"
    yield f"{prefix}/update/{oid}/model/config"
