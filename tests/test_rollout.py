"""Rollout pure logic: wave sizing, health gates, state transitions, the persisted record and the claim."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from builder.rollout.gates import DetectionSample, Health, Sample, Thresholds, judge, measure, wave_verdict
from builder.rollout.state import RolloutSettings, advance, expire, new_state, on_update, set_phase
from builder.rollout.store import ClaimError, RolloutStore, RolloutStoreError
from builder.rollout.waves import WaveSize, WaveSpecError, parse_waves, plan_waves

NODES = [f"n{i:02d}" for i in range(10)]


# -- waves -----------------------------------------------------------------------------------------------
def test_parse_waves() -> None:
    assert parse_waves("1, 25% ,rest") == [WaveSize("count", 1), WaveSize("percent", 25), WaveSize("rest")]
    for bad in ("", "1,,2", "rest,1", "0", "-1", "150%", "0%", "x", "1.5"):
        with pytest.raises(WaveSpecError):
            parse_waves(bad)


def test_plan_waves_counts_percentages_rest() -> None:
    assert plan_waves(parse_waves("1,25%,rest"), NODES[::-1]) == [["n00"], NODES[1:4], NODES[4:]]
    assert plan_waves(parse_waves("1,1,rest"), ["c", "a", "b"]) == [["a"], ["b"], ["c"]]
    # fewer nodes than waves: empty waves dropped; a tiny percentage still takes one node
    assert plan_waves(parse_waves("1,1,rest"), ["a"]) == [["a"]]
    assert plan_waves(parse_waves("1%,rest"), NODES) == [["n00"], NODES[1:]]
    # without `rest` the nodes left over are not part of the rollout
    assert plan_waves(parse_waves("2,10%"), NODES) == [["n00", "n01"], ["n02"]]
    assert plan_waves(parse_waves("100%"), NODES) == [NODES]


# -- gates -----------------------------------------------------------------------------------------------
def test_measure_from_samples() -> None:
    s = [Sample(t, 1, 10.0 + t, frames=10 * t, errors=t // 5) for t in range(11)]
    s += [Sample(20, 2, 99.0, 0, 0)]
    d = [DetectionSample(t, 1, 2) for t in range(11)]
    h = measure(s, d, 1, 0, 10)
    assert h.samples == 11 and h.p95_ms == 15.0
    assert h.error_rate == pytest.approx(2 / 100)
    assert h.detection_rate == pytest.approx(22 / 10)
    assert measure(s, d, 3, 0, 100) == Health()


def test_judge_gates() -> None:
    th = Thresholds(max_latency_ratio=1.5, max_error_rate=0.05, max_detection_rate_change=0.5)
    before = Health(p95_ms=10.0, error_rate=0.0, detection_rate=2.0, samples=5)
    assert judge(before, Health(14.0, 0.01, 2.5, 5), th).ok
    v = judge(before, Health(16.0, 0.10, 0.5, 5), th)
    assert not v.ok and len(v.reasons) == 3 and "1.60x" in v.reasons[0]
    # missing numbers: that gate is skipped, said so, not failed
    v = judge(Health(), Health(error_rate=0.0), th)
    assert v.ok and v.skipped == ["latency", "detection rate"]
    off = Thresholds(max_latency_ratio=None, max_error_rate=None, max_detection_rate_change=None)
    assert judge(before, Health(100.0, 1.0, 0.0), off).ok


def test_measure_detections_per_frame_from_telemetry() -> None:
    """Telemetry.detections of each window, summed: total / frames of that version only; None from old agents."""
    s = [Sample(t, 1, 10.0, 10 * t, 0, detection_frames=10, detection_count=20 + t % 2) for t in range(10)]
    s += [Sample(10, 1, 10.0, 100, 0), Sample(11, 2, 10.0, 110, 0, detection_frames=50, detection_count=0)]
    assert measure(s, [], 1, 0, 11).detections_per_frame == pytest.approx(205 / 100)
    assert measure(s, [], 2, 0, 11).detections_per_frame == 0.0
    old = [Sample(t, 1, 10.0, 10 * t, 0) for t in range(5)]  # an agent that does not report them
    assert measure(old, [DetectionSample(2, 1, 8)], 1, 0, 4) == Health(10.0, 0.0, 2.0, 5, None)
    zero = [Sample(t, 1, 10.0, 0, 0, detection_frames=0, detection_count=0) for t in range(3)]  # no frames ran
    assert measure(zero, [], 1, 0, 3).detections_per_frame is None


def test_judge_detections_per_frame_against_the_nodes_own_before() -> None:
    th = Thresholds(max_latency_ratio=None, max_error_rate=None, max_detection_rate_change=0.5)
    before = Health(detections_per_frame=2.0, detection_rate=4.0)
    assert judge(before, Health(detections_per_frame=2.9, detection_rate=0.1), th).ok  # per frame wins over rate
    v = judge(before, Health(detections_per_frame=0.4, detection_rate=4.0), th)
    assert not v.ok and v.reasons == ["detections per frame changed -80% (2.00 -> 0.40; max +-50%)"]
    assert not judge(before, Health(detections_per_frame=3.2), th).ok  # floods: +60 %
    # Either side without it (an agent before the field): the detections topic's rate, as before.
    v = judge(Health(detection_rate=4.0), Health(detections_per_frame=2.0, detection_rate=1.0), th)
    assert not v.ok and v.reasons[0].startswith("detection rate changed -75%")
    assert judge(Health(detection_rate=4.0), Health(detection_rate=5.0), th).ok
    # Nothing seen before: unchanged when nothing is seen after; otherwise no ratio to judge, skipped and said so.
    assert judge(Health(detections_per_frame=0.0), Health(detections_per_frame=0.0), th).skipped == []
    v = judge(Health(detections_per_frame=0.0), Health(detections_per_frame=1.0), th)
    assert v.ok and v.skipped == ["detection rate (none before)"]


def test_engine_detection_gate_halts_on_a_node_that_goes_blind(tmp_path: Path) -> None:
    """Each node against its own telemetry before the announcement: a (2 -> 2.2 per frame) passes, b (2 -> 0.4)
    fails and halts the rollout; the baseline is kept in the record."""
    th = Thresholds(soak_s=5, max_latency_ratio=None, max_error_rate=None, max_detection_rate_change=0.5)
    eng, link, ann, clock = _engine(tmp_path, [["a", "b"], ["c"]], th)

    def feed(node: str, version: int, t0: float, per_frame: float) -> None:
        link.seen[node].samples += [Sample(t0 + i, version, 10.0, 50 * i, 0, detection_frames=50,
                                           detection_count=round(50 * per_frame)) for i in range(5)]

    for n in ("a", "b"):
        feed(n, 6, 990, 2.0)
    eng.tick()
    assert eng.state.nodes["b"].baseline["detections_per_frame"] == pytest.approx(2.0)  # type: ignore[index]
    for n, per_frame in (("a", 2.2), ("b", 0.4)):
        link.node(n, 7, "committed", 7)
        feed(n, 7, 1000.5, per_frame)
    eng.tick()
    clock[0] += 6
    eng.tick()
    assert eng.state.nodes["a"].status == "healthy" and eng.state.nodes["a"].reason is None
    assert eng.state.nodes["b"].status == "failed"
    assert "detections per frame changed -80%" in (eng.state.nodes["b"].reason or "")
    assert eng.state.phase == "halted" and "c" not in ann.announced


def test_wave_verdict_thresholds() -> None:
    strict = Thresholds()
    assert wave_verdict(["healthy", "healthy"], strict) == "passed"
    assert wave_verdict(["healthy", "committed"], strict) == "running"
    assert wave_verdict(["healthy", "failed"], strict) == "failed"
    lax = Thresholds(success=0.5, failure=0.5)
    assert wave_verdict(["healthy", "failed"], lax) == "passed"
    assert wave_verdict(["failed", "failed", "announced"], lax) == "failed"
    assert wave_verdict(["healthy", "failed", "failed", "failed"], Thresholds(success=0.25, failure=1.0)) == "passed"
    assert wave_verdict(["failed", "failed"], Thresholds(success=0.5, failure=1.0)) == "failed"  # all done, none ok


# -- state -----------------------------------------------------------------------------------------------
def _state(waves: list[list[str]], th: Thresholds | None = None):  # type: ignore[no-untyped-def]
    settings = RolloutSettings(bundle="/b", broker="mqtt://x", key="/k", http_base="http://h", waves_spec="1,rest")
    return new_state("r1", "m", 7, settings, waves, th or Thresholds())


def test_transitions_advance_and_complete() -> None:
    st = _state([["a"], ["b", "c"]])
    th = st.settings.gates()
    assert th == Thresholds()
    st.nodes["a"].status = "announced"
    assert not on_update(st, "a", 6, "committed", None, 1.0)  # another version: not ours
    assert not on_update(st, "b", 7, "committed", None, 1.0)  # not announced yet
    assert on_update(st, "a", 7, "committed", None, 1.0) and st.nodes["a"].status == "committed"
    assert advance(st, th, 2.0) == "running" and st.current_wave == 0
    st.nodes["a"].status = "healthy"
    assert advance(st, th, 3.0) == "passed" and st.current_wave == 1 and st.phase == "running"
    for n in ("b", "c"):
        st.nodes[n].status = "healthy"
    assert advance(st, th, 4.0) == "passed" and st.phase == "completed" and st.done


def test_failure_halts_with_reason() -> None:
    st = _state([["a"], ["b"]])
    st.nodes["a"].status = "announced"
    assert on_update(st, "a", 7, "rolled_back", "golden self-test failed", 1.0)
    assert advance(st, st.settings.gates(), 2.0) == "failed"
    assert st.phase == "halted" and "wave 1 failed" in (st.reason or "") and "self-test" in (st.reason or "")
    assert st.current_wave == 0 and st.nodes["b"].status == "waiting"
    assert not set_phase(st, "running", None, 3.0)  # halted is final


def test_timeout_pause_resume() -> None:
    st = _state([["a"]], Thresholds(wave_timeout_s=10))
    th = st.settings.gates()
    st.nodes["a"].status, st.nodes["a"].announced_at = "announced", 0.0
    expire(st, th, 5.0)
    assert st.nodes["a"].status == "announced"
    assert set_phase(st, "paused", "op", 6.0) and advance(st, th, 6.0) == "running"
    assert set_phase(st, "running", None, 7.0)
    expire(st, th, 11.0)
    assert st.nodes["a"].status == "failed" and "no result" in (st.nodes["a"].reason or "")


# -- store and claim ---------------------------------------------------------------------------------------
def test_store_roundtrip_and_requests(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    with pytest.raises(RolloutStoreError):
        store.load()
    st = _state([["a"], ["b"]])
    store.save(st)
    store.set_current(st.id)
    assert store.load() == st
    store.request(st.id, "abort", rollback=True)
    req = store.take_request(st.id)
    assert req is not None and req["action"] == "abort" and req["rollback"] is True
    assert store.take_request(st.id) is None
    (tmp_path / f"{st.id}.json").write_text("{")
    with pytest.raises(RolloutStoreError):
        store.load()


def test_claim_excludes_second_runner_until_stale(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    one = store.claim("r1", owner="one", ttl_s=0.5)
    two = store.claim("r1", owner="two", ttl_s=0.5)
    one.acquire()
    with pytest.raises(ClaimError, match="run by one"):
        two.acquire()
    assert two.live_holder() is not None and one.live_holder() is None
    one.heartbeat()
    time.sleep(0.6)  # one died: its heartbeat went stale
    two.acquire()
    with pytest.raises(ClaimError, match="lost to two"):
        one.heartbeat()
    one.release()  # not its claim any more: leaves it alone
    assert two.holder() is not None and two.holder()["owner"] == "two"  # type: ignore[index]
    two.release()
    assert two.holder() is None


# -- engine, with the MQTT side and the announcer replaced by recorders -------------------------------------
class FakeLink:
    def __init__(self) -> None:
        from builder.rollout.link import NodeSeen

        self.seen: dict[str, NodeSeen] = {}
        self.commands: list[tuple[str, str]] = []

    def node(self, node: str, version: int, update: str | None = None, uversion: int | None = None) -> None:
        from agent.protocol.messages import ModelRef, NodeState, UpdateState, UpdateStatus
        from builder.rollout.link import NodeSeen

        st = NodeState(node=node, status="running", agent_version="t", model=ModelRef(name="m", version=version))
        up = UpdateStatus(node=node, version=uversion, state=UpdateState(update), reason="golden self-test failed") \
            if update else None
        self.seen[node] = NodeSeen(node, True, st, up)

    def snapshot(self, node: str):  # type: ignore[no-untyped-def]
        return self.seen.get(node)

    def command(self, node: str, request: dict[str, object]):  # type: ignore[no-untyped-def]
        from agent.protocol.messages import CommandResponse

        self.commands.append((node, str(request["command"])))
        self.node(node, 6)
        return CommandResponse(node=node, command="rollback", ok=True)


class FakeAnnouncer:
    def __init__(self) -> None:
        self.announced: list[str] = []
        self.withdrawn: list[str] = []

    def place_files(self, first: str) -> str:
        return "http://h/m/7/"

    def announce(self, link: object, node: str, base_url: str) -> str:
        self.announced.append(node)
        return f"edgefleet/announce/node/{node}"

    def withdraw(self, link: object, node: str) -> None:
        self.withdrawn.append(node)


def _engine(tmp_path: Path, waves: list[list[str]], th: Thresholds, rollback_on_halt: bool = False):  # type: ignore[no-untyped-def]
    from builder.rollout.engine import RolloutEngine

    st = _state(waves, th)
    st.settings.rollback_on_halt = rollback_on_halt
    link, ann = FakeLink(), FakeAnnouncer()
    for n in st.nodes:
        link.node(n, 6)
    clock = [1000.0]
    eng = RolloutEngine(st, RolloutStore(tmp_path), link, ann, clock=lambda: clock[0])  # type: ignore[arg-type]
    return eng, link, ann, clock


def test_engine_waves_soak_and_persist(tmp_path: Path) -> None:
    eng, link, ann, clock = _engine(tmp_path, [["a"], ["b", "c"]], Thresholds(soak_s=5, max_latency_ratio=None))
    eng.tick()
    assert ann.announced == ["a"] and eng.state.nodes["a"].previous_version == 6
    link.node("a", 7, "committed", 7)
    eng.tick()
    assert eng.state.nodes["a"].status == "committed" and ann.announced == ["a"]
    clock[0] += 6
    eng.tick()  # soaked: healthy (gates without data are skipped and said so), wave 2 announced
    assert eng.state.nodes["a"].status == "healthy" and "skipped" in (eng.state.nodes["a"].reason or "")
    assert ann.announced == ["a", "b", "c"] and eng.state.current_wave == 1
    assert RolloutStore(tmp_path).load(eng.state.id).current_wave == 1  # persisted on every change
    seen: list[str] = []
    eng.on_event = seen.append
    for i in range(250):  # the record keeps the newest events; each is still handed out once
        eng.state.log(f"e{i}")
        if i % 100 == 99:
            eng.tick()
    eng.tick()
    assert [s.split()[-1] for s in seen] == [f"e{i}" for i in range(250)]
    assert len(eng.state.events) == 200 and eng.state.event_count > 250


def test_engine_halt_withdraws_and_rolls_back_only_new_version(tmp_path: Path) -> None:
    eng, link, ann, clock = _engine(tmp_path, [["a", "b", "c"], ["d"]], Thresholds(), rollback_on_halt=True)
    eng.tick()
    link.node("a", 7, "committed", 7)  # runs the new version
    link.node("b", 6, "rolled_back", 7)  # rolled back by itself
    eng.tick()
    assert eng.state.phase == "halted" and "golden self-test" in (eng.state.reason or "")
    assert ann.withdrawn == ["b", "c"]  # the failed one's and the one still pending
    assert link.commands == [("a", "rollback")] and eng.state.nodes["a"].rolled_back
    assert "d" not in ann.announced


def test_engine_operator_requests(tmp_path: Path) -> None:
    eng, link, ann, clock = _engine(tmp_path, [["a"], ["b"]], Thresholds(soak_s=0, max_latency_ratio=None))
    eng.store.request(eng.state.id, "pause")
    eng.tick()
    assert eng.state.phase == "paused" and ann.announced == []
    eng.store.request(eng.state.id, "resume")
    eng.tick()
    assert eng.state.phase == "running" and ann.announced == ["a"]
    link.node("a", 7, "committed", 7)
    eng.store.request(eng.state.id, "abort", rollback=True)
    eng.tick()
    assert eng.state.phase == "aborted" and link.commands == [("a", "rollback")] and ann.announced == ["a"]
    assert not eng.resume() and eng.tick().phase == "aborted"


# -- CLI without a broker: status, pause with no runner, a second rollout refused ---------------------------
def test_cli_status_pause_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from builder.cli import main

    store = RolloutStore(tmp_path)
    st = _state([["a"], ["b"]])
    st.nodes["a"].status, st.nodes["a"].reason = "failed", "rolled_back: golden self-test failed"
    store.save(st)
    store.set_current(st.id)
    d = ["--state-dir", str(tmp_path)]
    assert main(["rollout", "status", *d]) == 0
    out = capsys.readouterr().out
    assert "phase    running" in out and "golden self-test failed" in out and "runner   none" in out
    assert main(["rollout", "pause", *d]) == 0
    assert store.load().phase == "paused"
    assert main(["rollout", "status", "--json", *d]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["phase"] == "paused"
    # another bundle while this one is not over: refused before touching the broker
    assert main(["rollout", "start", str(tmp_path / "other"), "--broker", "mqtt://127.0.0.1:1", "--key", "k",
                 "--http-base", "http://h", "--waves", "1,rest", *d]) == 1
    assert "not over" in capsys.readouterr().err
    assert main(["rollout", "start", "b", "--broker", "mqtt://127.0.0.1:1", "--key", "k", "--http-base", "h",
                 "--waves", "rest,1", *d]) == 2
    # a live runner gets requests instead
    store.claim(st.id, owner="runner").acquire()
    assert main(["rollout", "abort", "--rollback", *d]) == 0
    assert "requested" in capsys.readouterr().out
    assert store.take_request(st.id) == {"action": "abort", "rollback": True, "ts": pytest.approx(time.time(), abs=60)}
    assert main(["rollout", "status", "--id", "nope", *d]) == 1


def test_engine_run_stops_when_the_claim_is_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import threading

    from builder.rollout import engine as engine_mod

    monkeypatch.setattr(engine_mod, "HEARTBEAT_S", 0.05)
    eng, link, ann, clock = _engine(tmp_path, [["a"]], Thresholds())
    eng.claim = eng.store.claim(eng.state.id, owner="me")
    eng.claim.acquire()
    # another host's runner overwrites the claim (say, after a network split made ours look stale)
    other = json.dumps({"owner": "thief", "pid": 1, "host": "h", "heartbeat": time.time()})
    threading.Timer(0.3, eng.claim.path.write_text, args=(other,)).start()
    with pytest.raises(ClaimError, match="lost to thief"):
        eng.run(poll_s=0.05)


def test_target_nodes_from_retained_state() -> None:
    from agent.protocol.manifest import Target
    from agent.protocol.messages import NodeState
    from builder.rollout.link import NodeSeen
    from builder.rollout.plan import PlanError, create, target_nodes

    def seen(node: str, online: bool | None, status: str = "running", groups: tuple[str, ...] = ("lab",)) -> NodeSeen:
        return NodeSeen(node, online, NodeState(node=node, status=status, agent_version="t",  # type: ignore[arg-type]
                                                groups=list(groups)))

    fleet = [seen("b", True), seen("a", None), seen("c", False), seen("d", True, "stopped"),
             seen("e", True, groups=("yard",)), NodeSeen("f", True)]
    assert target_nodes(fleet, Target()) == ["a", "b", "e"]  # offline, stopped and state-less nodes left out
    assert target_nodes(fleet, Target.parse("group:yard")) == ["e"]
    settings = RolloutSettings(bundle="/nonexistent", broker="mqtt://x", key="/k", http_base="h", waves_spec="rest")
    with pytest.raises(PlanError, match="bundle"):
        create(settings, Thresholds(), fleet)


def test_link_authenticates_and_reports_a_refusal(broker_factory: object) -> None:
    from agent.protocol.topics import Topics
    from builder.rollout.link import LinkError, RolloutLink

    acl = (Path(__file__).resolve().parents[1] / "docs" / "mosquitto" / "edge-fleet.acl").read_text()
    broker = broker_factory(users={"fleet-admin": "right"}, acl=acl)  # type: ignore[operator]
    with pytest.raises(LinkError, match="refused"):
        RolloutLink(broker.url, Topics(), username="fleet-admin", password="wrong").start()
    link = RolloutLink(broker.url, Topics(), username="fleet-admin", password="right").start()
    try:
        link.publish("edgefleet/announce/node/n1", b"", retain=True)  # the admin may announce per node
    finally:
        link.stop()


def test_link_reads_detections_per_frame_and_old_telemetry(mqtt_broker: object) -> None:
    """Over a real Mosquitto: a new agent's telemetry gives the sample its detections; an old agent's payload
    (no `detections` key) still parses, without them; counts of another model than the message's are ignored."""
    from helpers import wait_for

    from agent.protocol.telemetry import DetectionCounts, Telemetry
    from agent.protocol.topics import Topics
    from builder.fleet.publish import mqtt_publish
    from builder.rollout.link import RolloutLink

    url = mqtt_broker.url  # type: ignore[attr-defined]
    old = (b'{"node": "old-1", "ts": "2026-01-01T00:00:00Z", "interval_s": 10.0, "agent_version": "0.9.0", '
           b'"uptime_s": 50.0, "model_version": 3, "latency": {"invoke": {"count": 9, "p95_ms": 7.5}}, '
           b'"counters": {"frames_inferred": 90, "inference_errors": 1}}')
    assert Telemetry.model_validate_json(old).detections is None
    new = Telemetry(node="new-1", interval_s=10.0, agent_version="1.0", uptime_s=5.0, model_version=3,
                    detections=DetectionCounts(model_version=3, frames=40, total=90, per_frame=2.25))
    swapped = new.model_copy(update={"node": "new-2", "detections": DetectionCounts(model_version=2, frames=4)})
    link = RolloutLink(url, Topics()).start()
    try:
        for node, payload in (("old-1", old), ("new-1", new.model_dump_json().encode()),
                              ("new-2", swapped.model_dump_json().encode())):
            # retained only so that a publish racing the link's SUBACK is not lost (nodes send it unretained)
            mqtt_publish(url, f"edgefleet/node/{node}/telemetry", payload, retain=True)
        assert wait_for(lambda: all((s := link.snapshot(n)) is not None and s.samples
                                    for n in ("old-1", "new-1", "new-2")), 5)
        samples = {n: link.snapshot(n).samples[-1] for n in ("old-1", "new-1", "new-2")}  # type: ignore[union-attr]
    finally:
        link.stop()
    assert (samples["old-1"].p95_ms, samples["old-1"].frames, samples["old-1"].detection_frames) == (7.5, 90, None)
    assert (samples["new-1"].detection_frames, samples["new-1"].detection_count) == (40, 90)
    assert samples["new-2"].detection_frames is None
