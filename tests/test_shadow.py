"""Shadow runs (issue 15, item 1): the agreement math on hand-made boxes (exact numbers), the live-FPS
budget, and the real daemon (real Mosquitto, real loopback HTTP, real TFLite on the trained test bundle, a
generated video) running a signed candidate beside its live model: the same bundle agrees fully, a
different candidate less, an untrusted candidate is refused while the live model keeps running, and an
empty retained request stops the run and frees the candidate's interpreter."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.inference.agreement import AgreementWindow, disagreement, match
from agent.inference.engine import EngineError
from agent.inference.shadow import LiveBudget
from agent.protocol.manifest import with_schema
from agent.protocol.messages import Detection
from agent.protocol.shadow import Agreement, ShadowReport, ShadowRequest, ShadowSampling, ShadowState
from agent.protocol.topics import Topics
from agent.security.bundle import Bundle, file_entry, write_manifest
from agent.security.signing import SigningKey
from agent.service.daemon import AgentService
from builder.data.synth import make_video
from builder.fleet.shadow import shadow_request
from builder.rollout.shadow_gate import ShadowThresholds, judge_shadow


def det(box: tuple[float, float, float, float], cls: str, score: float) -> Detection:
    return Detection(box=box, class_id=0, class_name=cls, score=score)


# ------------------------------------------------------------------------------------------ the math


def test_agreement_on_hand_made_boxes() -> None:
    live = [det((0, 0, .5, .5), "a", .9), det((.5, .5, 1, 1), "b", .8)]
    cand = [det((0, 0, .5, .4), "a", .7),  # IoU 0.8 with live[0]: a match
            det((.5, .5, 1, 1), "a", .6),  # right place, wrong class: no match
            det((.1, .1, .2, .2), "b", .3)]  # nowhere near: no match
    assert match(live, cand) == [(0, 0, pytest.approx(0.8))]
    assert disagreement(live, cand) == pytest.approx(1 - 2 * 1 / 5)
    assert disagreement(live, live) == 0.0 and disagreement([], []) == 0.0
    assert disagreement(live, []) == 1.0
    # IoU exactly at the threshold matches; just below does not
    assert disagreement([det((0, 0, 1, 1), "a", .5)], [det((0, 0, 1, .5), "a", .5)]) == 0.0
    assert disagreement([det((0, 0, 1, 1), "a", .5)], [det((0, 0, 1, .49), "a", .5)]) == 1.0
    # one live box, two candidates on it: the higher-scoring candidate takes it
    assert match([det((0, 0, 1, 1), "a", .5)], [det((0, 0, 1, .9), "a", .4), det((0, 0, 1, .6), "a", .9)]) == [
        (0, 1, pytest.approx(0.6))]

    w = AgreementWindow()
    assert w.add(live, cand, 0.010, 0.002) == pytest.approx(0.6)
    w.add([], [], 0.030, 0.002)
    s = w.summary()
    assert (s.frames, s.live, s.candidate, s.matched) == (2, 2, 3, 1)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(0.5) and s.f1 == pytest.approx(0.4)
    assert s.mean_iou == pytest.approx(0.8) and s.score_delta == pytest.approx(-0.2)
    a, b = s.per_class["a"], s.per_class["b"]
    assert (a.live, a.candidate, a.matched, a.precision, a.recall) == (1, 2, 1, 0.5, 1.0)
    assert (b.live, b.candidate, b.matched, b.precision, b.recall) == (1, 1, 0, 0.0, 0.0)
    assert s.live_scores.count == 2 and s.live_scores.mean == pytest.approx(0.85)
    assert s.live_scores.hist == [0] * 8 + [1, 1]
    assert s.candidate_scores.hist == [0, 0, 0, 1, 0, 0, 1, 1, 0, 0]
    assert (s.candidate_scores.p10, s.candidate_scores.p50, s.candidate_scores.p90) == (0.31, 0.61, 0.71)
    from agent.inference.agreement import latency_stats
    lat = latency_stats(list(w.candidate_latency))
    assert lat.samples == 2 and lat.p50_ms == pytest.approx(20.0) and lat.p95_ms == pytest.approx(29.0)


def test_live_budget_skips_when_the_live_frames_slow_down() -> None:
    b = LiveBudget(bound=0.10, alpha=1.0, frac_alpha=0.5)  # no smoothing: exact numbers
    assert b.allows() and b.loss() is None  # no baseline yet
    for _ in range(10):
        b.on_live(0.010, overlapped=False)
    b.on_live(0.012, overlapped=True)  # frac 0.5, +20 % on that frame -> loss 0.10: at the bound
    assert b.loss() == pytest.approx(0.10) and b.allows()
    b.on_live(0.016, overlapped=True)  # frac 0.75, +60 % -> 0.45
    assert b.loss() == pytest.approx(0.45) and not b.allows()


def test_gate_on_agreement() -> None:
    rep = ShadowReport(node="n", state=ShadowState.DONE, request_id="r")
    v = judge_shadow(rep, ShadowThresholds())
    assert not v.ok and "no agreement" in v.reasons[0]
    agree = Agreement(frames=50, live=40, candidate=40, matched=40, precision=1.0, recall=1.0, f1=1.0)
    full = rep.model_copy(update={"agreement": agree})
    assert judge_shadow(full, ShadowThresholds()).ok
    low = rep.model_copy(update={"agreement": agree.model_copy(update={"recall": 0.5, "f1": 0.66})})
    v = judge_shadow(low, ShadowThresholds(min_recall=0.8))
    assert not v.ok and v.reasons == ["F1 0.660 below 0.8", "recall 0.500 below 0.8"]
    few = rep.model_copy(update={"agreement": agree.model_copy(update={"frames": 3})})
    assert judge_shadow(few, ShadowThresholds(min_frames=20)).reasons == ["3 frames compared, fewer than 20"]


# ------------------------------------------------------------------------------------------ the daemon

T = Topics("shd")


class Reports:
    """A real MQTT subscriber keeping every ShadowReport the node publishes."""

    def __init__(self, broker: Any) -> None:
        self.got: list[ShadowReport] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect(broker.host, broker.port)
        self.c.subscribe(T.shadow_report("cam-1"), qos=1)
        self.c.loop_start()

    def _on(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append(ShadowReport.model_validate_json(m.payload))

    def last(self, request_id: str, *states: ShadowState) -> ShadowReport | None:
        with self.lock:
            found = [r for r in self.got if r.request_id == request_id and r.state in states]
        return found[-1] if found else None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, trained_bundle: Path) -> Path:
    p = tmp_path_factory.mktemp("shadow") / "scene.avi"
    make_video(p, n_frames=30, size=(320, 240), fps=10, classes=Bundle.load(trained_bundle).manifest.class_names,
               seed=5)
    return p


@pytest.fixture
def node(mqtt_broker: Any, trained_bundle: Path, trained_bundle_keys: Path, video: Path,
         tmp_path: Path) -> Iterator[AgentService]:
    cfg = AgentConfig(
        node_id="cam-1", topic_prefix="shd", broker={"url": mqtt_broker.url},
        camera={"source": str(video), "loop": True, "realtime": True},
        backend={"prefer": "cpu"}, detect={"score_threshold": 0.3}, publish={"max_rate_hz": 50},
        state_dir=tmp_path / "state", trusted_keys_dir=trained_bundle_keys, bundle=trained_bundle,
        updates={"clock_sync": "off"},  # a container's clock is not NTP-synchronized; expiries are judged anyway
    )
    svc = AgentService(cfg).start()
    assert wait_for(lambda: svc.pipeline.counters.frames >= 5, 30)
    yield svc
    svc.stop()


@pytest.fixture
def reports(mqtt_broker: Any) -> Iterator[Reports]:
    r = Reports(mqtt_broker)
    yield r
    r.close()


def variant(src: Path, dst: Path, key: Path, **update: Any) -> Path:
    """The bundle with its INT8 model only (a smaller download), manifest fields replaced, re-signed."""
    m = Bundle.load(src).manifest
    keep = {"model_quant.tflite", "golden_input.npy", "golden_expected.npy"}
    keep |= {m.score_reference} if m.score_reference else set()
    if update.get("models"):
        keep.add("model_cpu.tflite")
    dst.mkdir(parents=True)
    for rel in keep:
        shutil.copy(src / rel, dst / rel)
    edited = m.model_copy(update={"files": [file_entry(dst, r) for r in sorted(keep)], **update, "needs": None})
    write_manifest(dst, with_schema(edited, m.schema_version), SigningKey.load(key))  # lists follow the files
    return dst


def ask(broker: Any, request: ShadowRequest | None) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(T.shadow("cam-1"), request.model_dump_json() if request else b"", qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def run(broker: Any, http: Any, reports: Reports, bundle: Path, key: Path, rid: str, **kw: Any) -> ShadowReport:
    req = shadow_request(bundle, "cam-1", key, http.base_url, upload_dir=http.root, request_id=rid,
                         sampling=ShadowSampling(max_rate_hz=10), max_frames=12, report_every_s=0.5, **kw)
    ask(broker, req)
    assert wait_for(lambda: reports.last(rid, ShadowState.DONE, ShadowState.REJECTED, ShadowState.FAILED), 120)
    rep = reports.last(rid, ShadowState.DONE, ShadowState.REJECTED, ShadowState.FAILED)
    assert rep is not None
    return rep


def test_same_bundle_agrees_and_a_different_candidate_less(mqtt_broker: Any, http_server: Any, reports: Reports,
                                                           node: AgentService, trained_bundle: Path,
                                                           trained_bundle_key: Path, tmp_path: Path) -> None:
    same = run(mqtt_broker, http_server, reports, trained_bundle, trained_bundle_key, "same")
    assert same.state == ShadowState.DONE, same.reason
    a = same.agreement
    assert a is not None and a.frames >= 12 and a.live > 0
    assert a.matched == a.live == a.candidate and a.f1 == 1.0 and a.mean_iou == pytest.approx(1.0)
    assert a.live_scores == a.candidate_scores and a.score_delta == pytest.approx(0.0)
    assert same.candidate_latency is not None and same.candidate_latency.p50_ms and same.candidate_latency.p95_ms
    assert same.live is not None and same.candidate is not None and same.live.version == same.candidate.version
    assert node.shadow is not None and node.shadow.runner is None  # done: unloaded

    # the same weights, classes 0 and 1 swapped in the manifest: the same boxes under other names
    m = Bundle.load(trained_bundle).manifest
    names = list(m.class_names)
    names[0], names[1] = names[1], names[0]
    swapped = variant(trained_bundle, tmp_path / "swapped", trained_bundle_key, class_names=names, version=2)
    diff = run(mqtt_broker, http_server, reports, swapped, trained_bundle_key, "swapped")
    assert diff.state == ShadowState.DONE, diff.reason
    d = diff.agreement
    assert d is not None and d.frames >= 12 and d.f1 is not None and d.f1 < 1.0
    assert any(c.precision == 0.0 for c in d.per_class.values() if c.candidate)  # a swapped class matches nothing
    assert diff.candidate is not None and diff.candidate.version == 2

    # the FP model of the same bundle (model_cpu.tflite): the same objects, slightly other boxes and scores
    fp = variant(trained_bundle, tmp_path / "fp", trained_bundle_key, version=3,
                 models=m.models.model_copy(update={"cpu": "model_cpu.tflite"}))
    fpr = run(mqtt_broker, http_server, reports, fp, trained_bundle_key, "fp")
    assert fpr.state == ShadowState.DONE and fpr.agreement is not None, fpr.reason
    assert fpr.agreement.mean_iou is not None and fpr.agreement.mean_iou < 0.999
    assert fpr.agreement.score_delta != pytest.approx(0.0, abs=1e-6)


def test_untrusted_candidate_refused_live_keeps_running_and_stop_frees_it(
        mqtt_broker: Any, http_server: Any, reports: Reports, node: AgentService, trained_bundle: Path,
        trained_bundle_key: Path, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.key"
    SigningKey.generate().save(stranger)
    frames = node.pipeline.counters.frames
    bad = run(mqtt_broker, http_server, reports, variant(trained_bundle, tmp_path / "b", stranger), stranger, "bad")
    assert bad.state == ShadowState.REJECTED and bad.reason and "key" in bad.reason, bad.reason
    assert node.shadow is not None and node.shadow.runner is None
    assert wait_for(lambda: node.pipeline.counters.frames >= frames + 10, 10)
    assert node.node_state().status == "running"

    # the candidate's process dies mid-run (as a native crash would): failed, the live model runs on
    ask(mqtt_broker, shadow_request(trained_bundle, "cam-1", trained_bundle_key, http_server.base_url,
                                    upload_dir=http_server.root, request_id="crash", report_every_s=0.5))
    assert wait_for(lambda: node.shadow is not None and node.shadow.runner is not None, 30)
    os.kill(node.shadow.runner.candidate.process.pid, signal.SIGSEGV)  # type: ignore[union-attr, attr-defined]
    assert wait_for(lambda: reports.last("crash", ShadowState.FAILED), 10)
    assert f"exit code -{int(signal.SIGSEGV)}" in (reports.last("crash", ShadowState.FAILED).reason or "")  # type: ignore[union-attr]
    frames = node.pipeline.counters.frames
    assert wait_for(lambda: node.pipeline.counters.frames >= frames + 5, 10) and node.node_state().status == "running"

    # an endless run, then the empty retained message: stopped, the candidate's interpreter closed
    req = shadow_request(trained_bundle, "cam-1", trained_bundle_key, http_server.base_url,
                         upload_dir=http_server.root, request_id="endless", report_every_s=0.5)
    ask(mqtt_broker, req)
    assert wait_for(lambda: (r := reports.last("endless", ShadowState.RUNNING)) is not None and r.agreement
                    is not None and r.agreement.frames >= 2, 30)
    runner = node.shadow.runner
    assert runner is not None
    ask(mqtt_broker, None)
    assert wait_for(lambda: reports.last("endless", ShadowState.STOPPED), 10)
    assert node.shadow.runner is None and runner.closed
    assert not runner.candidate.process.is_alive()  # type: ignore[attr-defined]  # the candidate's process is gone
    with pytest.raises(EngineError, match="closed"):
        runner.candidate.infer_timed(__import__("numpy").zeros((8, 8, 3), "uint8"))
    assert not (node.cfg.state_dir / "shadow" / "candidate").exists()
    frames = node.pipeline.counters.frames
    assert wait_for(lambda: node.pipeline.counters.frames >= frames + 5, 10)


def test_builder_cli_start_status_stop(mqtt_broker: Any, http_server: Any, reports: Reports, node: AgentService,
                                       trained_bundle: Path, trained_bundle_key: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from builder.cli import main

    common = ["--node", "cam-1", "--broker", mqtt_broker.url, "--prefix", "shd"]
    rc = main(["shadow", "start", str(trained_bundle), *common, "--key", str(trained_bundle_key),
               "--http-base", http_server.base_url, "--upload", str(http_server.root), "--rate", "10",
               "--frames", "5", "--id", "cli", "--wait", "60"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "shadow run cli done" in out and "F1 1.000" in out, out
    assert main(["shadow", "status", *common, "--json"]) == 0
    rep = ShadowReport.model_validate_json(capsys.readouterr().out)
    assert rep.request_id == "cli" and rep.state == ShadowState.DONE and rep.agreement and rep.agreement.frames >= 5
    assert main(["shadow", "stop", *common]) == 0
    assert wait_for(lambda: reports.last("cli", ShadowState.STOPPED), 10)


def test_bench_misses_an_impossible_target_with_exit_3(trained_bundle: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "shadow.json"
    r = subprocess.run([sys.executable, "bench/bench_shadow.py", "--bundle", str(trained_bundle), "--pairs", "1",
                        "--seconds", "0.5", "--size", "320x240", "--max-loss", "-5", "--out", str(out)],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["targets_met"] is False and len(res["live_fps_off"]) == len(res["live_fps_on"]) == 1
    assert res["live_fps_off"][0] > 0 and res["live_fps_on"][0] > 0


def test_request_held_until_the_clock_can_judge_its_expiry(http_server: Any, trained_bundle: Path,
                                                           trained_bundle_key: Path, trained_bundle_keys: Path,
                                                           tmp_path: Path) -> None:
    from agent.inference.engine import Engine
    from agent.inference.shadow import candidate_config
    from agent.security.signing import Keyring
    from agent.service.shadow_link import ShadowLink
    from agent.system.clock import ClockStatus
    from agent.updates.store import UpdatesConfig

    synced = [False]
    published: list[ShadowReport] = []
    hooks: list[object] = []
    cfg = AgentConfig(node_id="cam-1", backend={"prefer": "cpu"}, state_dir=tmp_path / "state")
    link = ShadowLink(
        node="cam-1", groups=[], report_topic="r", keyring=Keyring.load(trained_bundle_keys),
        config=UpdatesConfig(clock_sync="required", clock_recheck_s=0.2), state_dir=tmp_path / "state",
        load_engine=lambda b: Engine.load(b, candidate_config(cfg)), set_hook=hooks.append, live_model=lambda: None,
        publish=lambda topic, payload: published.append(ShadowReport.model_validate_json(payload)),
        clock=lambda: ClockStatus(synchronized=synced[0], source="none", detail="test clock"),
    ).start()
    try:
        req = shadow_request(trained_bundle, "cam-1", trained_bundle_key, http_server.base_url,
                             upload_dir=http_server.root, request_id="held")
        link.on_message(type("Msg", (), {"payload": req.model_dump_json().encode()})())
        assert wait_for(lambda: any(r.reason and r.reason.startswith("held: waiting for clock sync") for r in published), 10)
        assert link.runner is None and not hooks
        synced[0] = True
        assert wait_for(lambda: published[-1].state == ShadowState.RUNNING, 30), published[-1]
        assert link.runner is not None and hooks[-1] == link.runner.offer
    finally:
        link.stop()
    assert hooks[-1] is None  # the hook is removed at stop
