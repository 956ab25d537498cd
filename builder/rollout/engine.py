"""RolloutEngine: one object runs one rollout. `tick()` observes the nodes, announces the current wave,
judges soak and gates, advances or halts, and persists the record; `run()` ticks until the rollout is
over while heartbeating the claim. The CLI (`edge-builder rollout`) and the dashboard each own one;
pause / resume / abort are methods (the dashboard) or requests in the store (another CLI process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from builder.rollout import shadowing
from builder.rollout.announce import Announcer
from builder.rollout.gates import Health, judge, measure
from builder.rollout.link import FleetSide, NodeSeen
from builder.rollout.state import NodeProgress, RolloutState, advance, expire, mark, on_update, set_phase
from builder.rollout.store import Claim, ClaimError, RolloutStore

BASELINE_S = 600.0  # the node's telemetry this long before its announcement is its "before"
HEARTBEAT_S = 2.0  # well under store.CLAIM_TTL_S
STALE_S = 5.0  # an update status older than the announcement (minus clock slack) is from another time


class RolloutEngine:
    def __init__(self, state: RolloutState, store: RolloutStore, link: FleetSide, announcer: Announcer,
                 claim: Claim | None = None, clock: Callable[[], float] = time.time) -> None:
        self.state, self.store, self.link, self.announcer = state, store, link, announcer
        self.claim, self.clock = claim, clock
        self.lock = threading.RLock()
        self._saved = ""
        self.on_event: Callable[[str], None] | None = None
        self._printed = state.event_count

    # -- operator ------------------------------------------------------------------------------------
    def pause(self) -> bool:
        with self.lock:
            return self._commit(set_phase(self.state, "paused", "paused by the operator", self.clock()))

    def resume(self) -> bool:
        with self.lock:
            if self.state.phase != "paused":
                return False
            return self._commit(set_phase(self.state, "running", None, self.clock()))

    def abort(self, rollback: bool = False) -> bool:
        with self.lock:
            now = self.clock()
            if not set_phase(self.state, "aborted", "aborted by the operator", now):
                return False
            self._withdraw_unfinished()
            if rollback:
                self.rollback(list(self.state.nodes))
            return self._commit(True)

    def rollback(self, nodes: list[str]) -> None:
        """MQTT v5 `rollback` to each node that runs this rollout's version (never to one that does not:
        it would step back from the version it had)."""
        for node in nodes:
            seen = self.link.snapshot(node)
            if seen is None or seen.running_version != self.state.version:
                continue
            resp = self.link.command(node, {"command": "rollback"})
            ok = resp is not None and resp.ok
            self.state.nodes[node].rolled_back = ok
            why = "no answer" if resp is None else (resp.error or "ok")
            self.state.log(f"{node}: rollback {'done' if ok else 'failed'} ({why})", self.clock())

    # -- the loop ------------------------------------------------------------------------------------
    def tick(self) -> RolloutState:
        with self.lock:
            now = self.clock()
            self._apply_request()
            if self.state.done:
                self._commit(True)
                return self.state
            self._observe(now)
            self._soak(now)
            if self.state.phase == "running":
                th = self.state.settings.gates()
                self._announce_wave(now)
                expire(self.state, th, now)
                verdict = advance(self.state, th, now)
                if verdict == "passed" and not self.state.done:
                    self._announce_wave(now)
                elif self.state.phase == "halted":
                    self._withdraw_unfinished()
                    if self.state.settings.rollback_on_halt:
                        self.rollback(self.state.waves[self.state.current_wave])
            self._commit(True)
            return self.state

    def run(self, poll_s: float = 1.0, stop: threading.Event | None = None) -> RolloutState:
        """Tick until the rollout is over or `stop` is set. The claim's heartbeat runs in its own thread, so
        a slow tick (rollback commands wait for answers) never lets the claim go stale; a lost claim stops
        the loop and raises ClaimError."""
        stop = stop or threading.Event()
        lost: list[ClaimError] = []
        beating = threading.Event()

        def beat() -> None:
            while not beating.wait(HEARTBEAT_S):
                try:
                    assert self.claim is not None
                    self.claim.heartbeat()
                except ClaimError as exc:
                    lost.append(exc)
                    stop.set()
                    return

        if self.claim is not None:
            self.claim.heartbeat()
            threading.Thread(target=beat, name="rollout-claim", daemon=True).start()
        try:
            while not stop.is_set() and not self.tick().done:
                stop.wait(poll_s)
        finally:
            beating.set()
        if lost:
            raise lost[0]
        return self.state

    # -- steps ---------------------------------------------------------------------------------------
    def _apply_request(self) -> None:
        req = self.store.take_request(self.state.id)
        if not req:
            return
        action = req.get("action")
        if action == "pause":
            self.pause()
        elif action == "resume":
            self.resume()
        elif action == "abort":
            self.abort(bool(req.get("rollback")))

    def _observe(self, now: float) -> None:
        for p in self.state.nodes.values():
            if p.status not in ("announced", "committed"):
                continue
            seen = self.link.snapshot(p.node)
            if seen is None:
                continue
            u = seen.update
            if u is not None and u.ts.timestamp() >= (p.announced_at or 0) - STALE_S:
                on_update(self.state, p.node, u.version, u.state.value, u.reason, now)
            if seen.running_version == self.state.version:
                on_update(self.state, p.node, self.state.version, "running", None, now)

    def _soak(self, now: float) -> None:
        th = self.state.settings.gates()
        for p in self.state.nodes.values():
            if p.status != "committed" or p.committed_at is None or now - p.committed_at < th.soak_s:
                continue
            seen = self.link.snapshot(p.node) or NodeSeen(p.node)
            if seen.online is False:
                mark(self.state, p.node, "failed", "went offline during the soak", now)
                continue
            if seen.running_version not in (None, self.state.version):
                mark(self.state, p.node, "failed", f"runs v{seen.running_version} after the soak", now)
                continue
            before = Health(**p.baseline) if p.baseline else Health()  # type: ignore[arg-type]
            after = measure(seen.samples, seen.detections, self.state.version, p.committed_at, now)
            v = judge(before, after, th)
            note = f"gates skipped (no data): {', '.join(v.skipped)}" if v.skipped else None
            mark(self.state, p.node, "healthy" if v.ok else "failed", "; ".join(v.reasons) or note, now)

    def _announce_wave(self, now: float) -> None:
        gate = self.state.settings.shadow
        pending = [p for p in self.state.wave_nodes() if p.status in ("waiting", "shadowing")]
        if not pending:
            return
        if self.state.base_url is None:
            self.state.base_url = self.announcer.place_files(self.state.waves[0][0])
        for p in pending:
            if gate is not None and p.status == "waiting":  # shadow first, announce once it agrees
                shadowing.ask(self.state, p, self.link, self.announcer, self.state.base_url, now)
                continue
            if gate is not None and not shadowing.judge(self.state, p, self.link, gate, now):
                if p.status == "failed":
                    shadowing.clear(self.link, self.announcer, p)
                continue
            if gate is not None:
                shadowing.clear(self.link, self.announcer, p)
            self._announce(p, now)

    def _announce(self, p: NodeProgress, now: float) -> None:
        assert self.state.base_url is not None
        seen = self.link.snapshot(p.node)
        p.previous_version = seen.running_version if seen else None
        if seen is not None:
            base = measure(seen.samples, seen.detections, p.previous_version, now - BASELINE_S, now)
            p.baseline = asdict(base)
        topic = self.announcer.announce(self.link, p.node, self.state.base_url)
        p.status, p.announced_at = "announced", now
        self.state.log(f"{p.node}: announced v{self.state.version} on {topic} "
                       f"(wave {p.wave + 1}, runs v{p.previous_version})", now)

    def _withdraw_unfinished(self) -> None:
        for p in self.state.nodes.values():
            if p.status in ("announced", "failed"):  # a failed node's retained announcement has no use left
                self.announcer.withdraw(self.link, p.node)
            if p.status == "shadowing":
                shadowing.clear(self.link, self.announcer, p)

    def _commit(self, changed: bool) -> bool:
        """Persist the record when it changed; hand new events to on_event."""
        body = self.state.model_dump_json()
        if body != self._saved:
            self.store.save(self.state)
            self._saved = body
        new = min(self.state.event_count - self._printed, len(self.state.events))
        if self.on_event is not None and new > 0:
            for line in self.state.events[-new:]:
                self.on_event(line)
        self._printed = self.state.event_count
        return changed


__all__ = ["RolloutEngine"]
