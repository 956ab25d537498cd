"""A node's model store and updater without MQTT, for the state-loss and crash-consistency tests.

The updater is the real one (verify, download over real HTTP, activate with a real TFLite engine and
golden self-test, swap, trial, commit); announcements are handed to it directly instead of via a broker.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers_updates import FrameLoop, TfliteEngine, make_bundle, write_video

from agent.protocol.topics import Topics
from agent.security.bundle import Bundle
from agent.security.signing import Keyring, SigningKey
from agent.updates.store import ModelStore, UpdatesConfig
from agent.updates.updater import Updater
from builder.fleet.publish import make_announcement

CONFIG = UpdatesConfig(trial_frames=3, trial_seconds=0.3, trial_max_wait_s=10.0, preflight=False,
                       read_timeout_s=2.0, connect_timeout_s=1.0, total_timeout_s=20.0, clock_sync="off")


@dataclass
class Fleet:
    """Keys, signed bundles v1..vN and the HTTP server that serves them."""

    tmp: Path
    key: SigningKey
    keyring: Keyring
    http: Any
    bundles: dict[int, Path]
    video: Path

    def announcement(self, version: int) -> bytes:
        src = self.bundles[version]
        www = Path(self.http.root) / f"v{version}"
        if not www.exists():
            shutil.copytree(src, www)
        ann = make_announcement((src / "manifest.json").read_bytes(), self.key, f"{self.http.base_url}/v{version}/")
        return ann.model_dump_json().encode()


def make_fleet(tmp: Path, http: Any, versions: tuple[int, ...] = (1, 2)) -> Fleet:
    key = SigningKey.generate()
    (tmp / "keys").mkdir()
    trusted = tmp / "trusted"
    trusted.mkdir()
    shutil.copy(key.save(tmp / "keys" / "fleet.key"), trusted / "fleet.pub")
    expires = datetime.now(UTC) + timedelta(days=1)
    bundles = {v: make_bundle(tmp / f"bundle-v{v}", key, v, expires=expires) for v in versions}
    return Fleet(tmp, key, Keyring.load(trusted), http, bundles, write_video(tmp / "camera.avi", frames=30))


class _Swap:
    """The updater's swap_engine: into the frame loop while one runs (a trial needs frames), else direct."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.loop: FrameLoop | None = None

    def __call__(self, new: Any) -> Any:
        if self.loop is not None:
            return self.loop.swap_engine(new)
        old, self.engine = self.engine, new
        return old


def start_node(root: Path, keyring: Keyring, fallback: Path | None = None,
               with_keyring: bool = True) -> tuple[Updater, Bundle | None]:
    """A node's startup: recover the store, load the committed bundle (verified), run it."""
    store = ModelStore(root, keep=CONFIG.keep_versions, keyring=keyring if with_keyring else None)
    swap = _Swap()
    u = Updater(node="node-1", groups=["lab"], topics=Topics("edgefleet"), store=store, keyring=keyring,
                config=CONFIG, load_engine=TfliteEngine, swap_engine=swap,
                publish=lambda topic, payload, retain: None)
    bundle = u.startup(fallback)
    if bundle is not None:
        swap.engine = TfliteEngine(bundle)
        u.set_running(swap.engine, bundle)
    return u, bundle


def run_update(u: Updater, payload: bytes, video: Path, timeout: float = 60.0) -> None:
    """Hand one announcement to the updater's worker, with camera frames flowing, and wait for the outcome."""
    swap = u.swap_engine
    assert isinstance(swap, _Swap)
    swap.loop = FrameLoop(video, swap.engine, hook=u.on_frame).start()
    u.start()
    try:
        u.on_announcement(payload, "edgefleet/announce/all")
        assert u.wait_idle(timeout), "update did not finish"
    finally:
        u.stop()
        swap.loop.stop()
        swap.engine, swap.loop = swap.loop.engine, None
