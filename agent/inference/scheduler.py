"""Fair scheduling of several cameras onto the inference loops: each loop takes the freshest frame of the
camera that has waited longest since it was last served.

Nothing queues: every camera keeps one frame (agent.camera.frame.LatestFrame), so a camera that stalls or
dies simply never has a frame ready and costs the others nothing, and a camera that produces faster than
its share only overwrites its own slot (counted as dropped). A camera with `target_fps` is not served
before its next due time. Several loops (one per accelerator) may call take() at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from agent.camera.frame import Frame
from agent.inference.feeds import Feed


class FairScheduler:
    def __init__(self, feeds: Sequence[Feed]) -> None:
        if not feeds:
            raise ValueError("no camera to schedule")
        names = [f.name for f in feeds]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique: {names}")
        self.feeds = list(feeds)
        self._cond = threading.Condition()
        for f in self.feeds:
            f.camera.slot.add_listener(self._wake)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def take(self, timeout: float) -> tuple[Feed, Frame] | None:
        """The freshest frame of the longest-waiting camera that has one (and is due), waiting up to
        `timeout` seconds for one; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                ready = [f for f in self.feeds if f.camera.slot.ready]
                due = [f for f in ready if f.next_due <= now]
                if due:
                    feed = min(due, key=lambda f: f.last_served)
                    frame = feed.camera.slot.get(0)
                    if frame is None:  # another loop was faster
                        continue
                    feed.last_served = now
                    if feed.target_fps:
                        feed.next_due = now + 1.0 / feed.target_fps
                    return feed, frame
                wait = deadline - now
                if ready:  # frames waiting only for their camera's pacing
                    wait = min(wait, min(f.next_due for f in ready) - now)
                if deadline - now <= 0:
                    return None
                self._cond.wait(max(wait, 0.0005))
