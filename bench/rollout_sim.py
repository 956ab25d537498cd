"""A staged rollout to a fleet of SIMULATED nodes, for bench_dashboard.py: builder.rollout's own engine run in this
process (RolloutLink, plan, Announcer, store), a bundle signed with a fresh key, the nodes of
builder.dashboard.loadgen answering each announcement like a node (retained UpdateStatus, NodeState).

Measured: wall time from the plan to the end, each wave's time, the engine's slowest tick (a tick observes,
announces, judges and saves the record), and how long announcing took (one signed manifest per node).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from agent.protocol.topics import Topics
from agent.security.keys import SigningKey
from builder.dashboard.loadgen import sim_bundle
from builder.rollout.announce import Announcer
from builder.rollout.engine import RolloutEngine
from builder.rollout.gates import Thresholds
from builder.rollout.link import FleetSide, RolloutLink
from builder.rollout.plan import create
from builder.rollout.state import RolloutSettings
from builder.rollout.store import RolloutStore

WAVE_TIMEOUT_S = 180.0
HTTP_BASE = "http://127.0.0.1:9/bundles"  # simulated nodes download nothing


class TimedAnnouncer(Announcer):
    """The engine's Announcer, timed: seconds spent signing and publishing per-node announcements."""

    announce_s = 0.0
    announced = 0

    def announce(self, link: FleetSide, node: str, base_url: str) -> str:
        t0 = time.perf_counter()
        try:
            return super().announce(link, node, base_url)
        finally:
            self.announce_s += time.perf_counter() - t0
            self.announced += 1


def run_rollout(broker_url: str, topics: Topics, nodes: int, work: Path, waves: str, soak_s: float) -> dict[str, Any]:
    """Discover the fleet, plan `waves`, run the engine until the rollout is over (or an overall deadline)."""
    work = Path(tempfile.mkdtemp(prefix="rollout-", dir=work))
    key = SigningKey.generate()
    key_path = work / "fleet.key"
    key.save(key_path)  # (returns the public key's path)
    bundle = sim_bundle(work / "shapes-v2", "shapes", 2, key)
    link = RolloutLink(broker_url, topics).start()
    try:
        t_discover, deadline = time.monotonic(), time.monotonic() + 60
        while sum(1 for s in link.known() if s.state is not None) < nodes and time.monotonic() < deadline:
            time.sleep(0.2)
        discover_s = time.monotonic() - t_discover
        settings = RolloutSettings(bundle=str(bundle), broker=broker_url, key=str(key_path), http_base=HTTP_BASE,
                                   prefix=topics.prefix, waves_spec=waves)
        th = Thresholds(soak_s=soak_s, wave_timeout_s=WAVE_TIMEOUT_S, max_detection_rate_change=None)
        t0 = time.monotonic()
        state = create(settings, th, link.known())
        store = RolloutStore(work / "rollouts")
        store.save(state)
        announcer = TimedAnnouncer(bundle, key_path, HTTP_BASE, None, topics)
        engine = RolloutEngine(state, store, link, announcer)
        passed: list[float] = []  # when each wave passed (the record's events are capped: read the wave index)
        slowest, ticks = 0.0, 0
        stop_at = t0 + WAVE_TIMEOUT_S * len(state.waves) + 60
        while time.monotonic() < stop_at:
            t = time.monotonic()
            st = engine.tick()
            done = st.done
            slowest, ticks = max(slowest, time.monotonic() - t), ticks + 1
            passed += [time.monotonic() - t0] * (st.current_wave + (st.phase == "completed") - len(passed))
            if done:
                break
            time.sleep(0.5)
        final = engine.state
        wall = time.monotonic() - t0
    finally:
        link.stop()
    statuses = [p.status for p in final.nodes.values()]
    return {"waves": waves, "wave_sizes": [len(w) for w in final.waves], "soak_s": soak_s, "phase": final.phase,
            "reason": final.reason, "completed": final.phase == "completed", "wall_s": round(wall, 1),
            "waves_passed_at_s": [round(x, 1) for x in passed], "healthy": statuses.count("healthy"),
            "failed": statuses.count("failed"), "ticks": ticks, "slowest_tick_s": round(slowest, 2),
            "announce_s": round(announcer.announce_s, 2), "announced": announcer.announced,
            "rollout_nodes": len(final.nodes), "discover_s": round(discover_s, 1)}
