"""Home Assistant discovery over a real broker: required keys, and every state topic really carries the
field its entity reads (checked on the payloads a node actually published, read back with mosquitto_sub)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, BrokerConfig
from agent.protocol.messages import ModelRef, NodeState, UpdateState, UpdateStatus
from agent.protocol.topics import Topics
from agent.service.mqtt import MqttClient
from agent.telemetry.hass import ENTITIES, discovery_messages, entity_fields
from agent.telemetry.power import build_power_monitor
from agent.telemetry.runtime import TelemetryRuntime

DATA = Path(__file__).parent / "data"
T = Topics("edgefleet")
NODE = "hass-node"

# Units Home Assistant accepts for the device classes we use (homeassistant/components/sensor/const.py).
HA_UNITS = {"duration": {"d", "h", "min", "s", "ms", "µs"}, "power": {"W", "kW", "mW", "MW", "GW", "TW", "BTU/h"},
            "temperature": {"°C", "°F", "K"}, "data_size": {"B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "bit"}}
HA_STATE_CLASSES = {"measurement", "total", "total_increasing"}


def _resolve(payload: dict[str, Any], path: str) -> Any:
    cur: Any = payload
    for part in path.split("."):
        assert isinstance(cur, dict) and part in cur, f"{path}: no {part!r} in {str(cur)[:200]}"
        cur = cur[part]
    return cur


def test_discovery_payloads_required_keys() -> None:
    msgs = discovery_messages(T, NODE, "0.1.0")
    assert len(msgs) == len(ENTITIES) + 1
    ids = set()
    for topic, cfg in msgs:
        component = topic.split("/")[1]
        assert topic.startswith("homeassistant/") and topic.endswith("/config")
        for key in ("name", "unique_id", "state_topic", "value_template", "availability", "device"):
            assert key in cfg, (topic, key)
        assert cfg["unique_id"] not in ids
        ids.add(cfg["unique_id"])
        assert cfg["availability"] == [{"topic": T.availability(NODE), "payload_available": "online",
                                        "payload_not_available": "offline"}]
        assert cfg["device"]["identifiers"] == [f"edgefleet_{NODE}"]
        dc, unit, sc = cfg.get("device_class"), cfg.get("unit_of_measurement"), cfg.get("state_class")
        if component == "sensor":
            if dc in HA_UNITS:
                assert unit in HA_UNITS[dc], (topic, dc, unit)
            if dc == "enum":
                assert cfg["options"] and unit is None and sc is None
            if sc is not None:
                assert sc in HA_STATE_CLASSES
        if component == "update":
            assert cfg["latest_version_topic"] == T.update(NODE) and cfg["state_topic"] == T.state(NODE)
    assert {t.split("/")[1] for t, _ in msgs} == {"sensor", "binary_sensor", "update"}


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients missing")
def test_state_topics_carry_the_named_fields(mqtt_broker) -> None:  # type: ignore[no-untyped-def]
    cfg = AgentConfig(node_id=NODE, broker=BrokerConfig(url=mqtt_broker.url))
    sub = subprocess.Popen(["mosquitto_sub", "-h", mqtt_broker.host, "-p", str(mqtt_broker.port), "-v",
                            "-t", "homeassistant/#", "-t", f"edgefleet/node/{NODE}/#", "-W", "5"],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    client = MqttClient(cfg.broker, client_id=f"edge-agent-{NODE}", availability_topic=T.availability(NODE))
    rt = TelemetryRuntime(cfg, client, T, "0.1.0")
    # every optional source present, in the real sysfs / vcgencmd formats (tests/data/README.md)
    rt.thermal.thermal_root, rt.thermal.apex_root = DATA / "sysfs/thermal-pi5", DATA / "sysfs/apex"
    rt.thermal.runner = lambda argv: (DATA / "vcgencmd/get_throttled-undervolt.txt").read_text()
    rt.collector.power = build_power_monitor(rt.collector.duty_cycle, source="hwmon",
                                             hwmon_root=DATA / "sysfs/hwmon-ina219").read
    client.start()
    try:
        assert client.wait_connected(10)
        state = NodeState(node=NODE, status="running", agent_version="0.1.0", backend="cpu", device="cpu:2",
                          model=ModelRef(name="shapes", version=3), camera="streaming")
        client.publish(T.state(NODE), state.model_dump_json(), qos=1, retain=True)
        client.publish(T.update(NODE), UpdateStatus(node=NODE, name="shapes", version=4, state=UpdateState.DOWNLOADING,
                                                    progress=0.5, running_version=3).model_dump_json(), qos=1, retain=True)
        rt.update_status(state)
        rt.collector.snapshot()
        for _ in range(20):
            rt.on_frame(_result(0.004))
        rt.publisher.publish_now()
        out, _ = sub.communicate(timeout=20)
    finally:
        client.stop()
        if sub.poll() is None:
            sub.kill()

    latest: dict[str, str] = {}
    for line in out.splitlines():
        topic, _, payload = line.partition(" ")
        latest[topic] = payload
    configs = {t: json.loads(p) for t, p in latest.items() if t.startswith("homeassistant/") and p}
    assert len(configs) == len(ENTITIES) + 1, sorted(configs)
    payloads = {t: json.loads(p) for t, p in latest.items() if t.startswith("edgefleet/") and p.startswith("{")}
    # every entity's state topic was really published and carries its field (non-null here: all sources exist)
    for obj, topic, path in entity_fields(T, NODE):
        assert topic in payloads, f"{obj}: nothing published on {topic}"
        assert _resolve(payloads[topic], path) is not None, (obj, path)
    assert latest[T.availability(NODE)] == "online"  # the availability topic every entity names

    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    for cfgd in configs.values():
        value_json = payloads[cfgd["state_topic"]]
        rendered = env.from_string(cfgd["value_template"]).render(value_json=value_json).strip()
        assert rendered not in ("", "unknown", "None"), (cfgd["unique_id"], rendered)
        if "latest_version_template" in cfgd:
            latest_v = env.from_string(cfgd["latest_version_template"]).render(
                value_json=payloads[cfgd["latest_version_topic"]]).strip()
            assert (rendered, latest_v) == ("3", "4")  # installed v3, v4 on its way
    by_id = {c["unique_id"]: c for c in configs.values()}
    tpl = by_id[f"edgefleet_{NODE}_latency_invoke_p50"]["value_template"]
    p50 = float(env.from_string(tpl).render(value_json=payloads[T.telemetry(NODE)]))
    assert p50 == pytest.approx(4.0, rel=0.01)
    thr = by_id[f"edgefleet_{NODE}_under_voltage"]["value_template"]
    assert env.from_string(thr).render(value_json=payloads[T.telemetry(NODE)]) == "ON"
    # a node without the optional sensors renders "unknown", not a template error
    assert env.from_string(by_id[f"edgefleet_{NODE}_tpu_temperature"]["value_template"]).render(
        value_json={"temperatures": {"cpu_c": 40.0, "tpu_c": {}, "tpu_max_c": None}}) == "unknown"
    assert env.from_string(thr).render(value_json={"throttle": None}) == "OFF"


def _result(invoke_s: float) -> Any:
    from types import SimpleNamespace

    stats = SimpleNamespace(error=None, backend="cpu", model_version=3, capture_wait_s=0.001, preprocess_s=0.0005,
                            invoke_s=invoke_s, postprocess_s=0.0003, end_to_end_s=invoke_s + 0.002)
    return SimpleNamespace(stats=stats, model_name="shapes", detections=[])


def test_per_camera_entities_read_their_camera_from_telemetry() -> None:
    """Issue 16: each camera is a set of entities on the node's device; the templates read `cameras.<name>` even
    when the name holds a dot or a dash, and render `unknown` for a camera the payload lacks."""
    jinja2 = pytest.importorskip("jinja2")

    from agent.protocol.telemetry import CameraTelemetry, StageLatency, Telemetry

    msgs = dict(discovery_messages(T, NODE, "0.1.0", cameras=["front.door", "yard"]))
    base = dict(discovery_messages(T, NODE, "0.1.0"))
    assert set(base) < set(msgs)
    fps = msgs[f"homeassistant/sensor/{NODE}/camera_front_door_fps/config"]
    assert fps["state_topic"] == T.telemetry(NODE) and fps["unit_of_measurement"] == "fps"
    assert fps["device"] == base[next(iter(base))]["device"]  # grouped under the node
    tel = Telemetry(node=NODE, interval_s=1, agent_version="0", uptime_s=1, cameras={
        "front.door": CameraTelemetry(state="stalled", device="usb:1", inference_fps=12.5,
                                      latency=StageLatency(count=3, p95_ms=8.25))})
    payload = json.loads(tel.model_dump_json())
    env = jinja2.Environment()

    def render(topic: str, data: dict[str, Any]) -> str:
        return env.from_string(msgs[topic]["value_template"]).render(value_json=data)

    root = f"homeassistant/sensor/{NODE}"
    assert render(f"{root}/camera_front_door_fps/config", payload) == "12.5"
    assert render(f"{root}/camera_front_door_state/config", payload) == "stalled"
    assert render(f"{root}/camera_front_door_device/config", payload) == "usb:1"
    assert render(f"{root}/camera_front_door_latency_p95/config", payload) == "8.25"
    assert render(f"{root}/camera_yard_fps/config", payload) == "unknown"
