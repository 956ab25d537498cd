"""Staged rollouts from the dashboard: the page is a second face of builder.rollout's engine.

The dashboard process can own one rollout at a time (the engine's claim + heartbeat, the engine's `run()` in the
one runner thread of `StagedRollouts`); at start it adopts an unfinished rollout of its state directory that no
live process claims. A rollout claimed by a live `edge-builder rollout start` is shown read-only, and pause /
resume / abort go to whichever process owns it through the store's request file (as `rollout pause` does).

The bundle rule of the one-shot publish holds: only a listed bundle signed by a trusted key is rolled out, and
what gets signed is a verified private copy (kept under `<state dir>/bundles/`, so a restarted runner announces
the very bytes that were checked).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field

from builder.dashboard.bundles import BundleInfo
from builder.dashboard.errors import ApiError
from builder.dashboard.rollout import PublishConfig, RolloutError, verified_copy
from builder.dashboard.rollouts_view import rollout_view
from builder.fleet.publish import PublishError
from builder.rollout.announce import Announcer
from builder.rollout.engine import RolloutEngine
from builder.rollout.gates import Thresholds
from builder.rollout.link import LinkError, RolloutLink
from builder.rollout.plan import PlanError, create
from builder.rollout.state import RolloutSettings, RolloutState, set_phase
from builder.rollout.store import CLAIM_TTL_S, ClaimError, RolloutStore, RolloutStoreError
from builder.rollout.waves import WaveSpecError, parse_waves

DEFAULT = Thresholds()  # the CLI's defaults (`edge-builder rollout start`)
SETTLE_S = 3.0  # an adopted rollout waits this long for the nodes' retained state (as `start --discover`)


class RolloutsError(ApiError):
    """A refused rollout request; `status` is the HTTP status the page gets."""


class StartRequest(BaseModel):
    """The page's form: the settings `edge-builder rollout start` takes (names without the dashes)."""

    model_config = ConfigDict(extra="forbid")
    bundle: str
    target: str = "all"
    waves: str = Field(min_length=1, max_length=200)
    soak: float = Field(DEFAULT.soak_s, ge=0, le=86400)
    success_threshold: float = Field(DEFAULT.success, ge=0, le=1)
    failure_threshold: float = Field(DEFAULT.failure, ge=0, le=1)
    max_latency_ratio: float | None = Field(DEFAULT.max_latency_ratio, gt=0)
    max_error_rate: float | None = Field(DEFAULT.max_error_rate, ge=0, le=1)
    max_detection_rate_change: float | None = Field(DEFAULT.max_detection_rate_change, ge=0)
    wave_timeout: float = Field(DEFAULT.wave_timeout_s, gt=0)
    rollback_on_halt: bool = False

    def thresholds(self) -> Thresholds:
        return Thresholds(success=self.success_threshold, failure=self.failure_threshold, soak_s=self.soak,
                          max_latency_ratio=self.max_latency_ratio, max_error_rate=self.max_error_rate,
                          max_detection_rate_change=self.max_detection_rate_change,
                          wave_timeout_s=self.wave_timeout)


def _broker_key(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return (u.hostname or "", u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883))


def _recorded_url(url: str) -> str:
    """The broker URL without its password: the record is a file others may read."""
    u = urlparse(url)
    host = f"[{u.hostname}]" if u.hostname and ":" in u.hostname else (u.hostname or "")
    return f"{u.scheme}://{host}" + (f":{u.port}" if u.port else "") + u.path


class StagedRollouts:
    def __init__(self, cfg: PublishConfig, store_dir: Path | None = None, settle_s: float = SETTLE_S) -> None:
        self.cfg = cfg
        self.store = RolloutStore(store_dir)
        self.settle_s = settle_s
        self.owner = f"dashboard@{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.link: RolloutLink | None = None
        self.link_problem: str | None = None
        self.error: str | None = None  # why the runner stopped last (shown on the page)
        self._lock = threading.RLock()
        self._engine: RolloutEngine | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> StagedRollouts:
        """Connect the engine's MQTT side and adopt an unfinished rollout nobody runs."""
        try:
            self.link = RolloutLink(self.cfg.broker_url, self.cfg.topics, ca_file=self.cfg.ca_file).start()
        except LinkError as exc:
            self.link_problem = f"staged rollouts unavailable: {exc}"
            return self
        for st in self.records():
            if st.done or self._foreign(st) or self._runner(st.id) is not None:
                continue
            try:
                self._adopt(st, self.settle_s)
                break
            except RolloutsError as exc:
                self.error = f"cannot resume {st.id}: {exc}"
        return self

    def stop(self) -> None:
        """Stop the runner (its claim is released, the record kept: the next start carries on)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        if self.link is not None:
            self.link.stop()

    def problem(self) -> str | None:
        return self.link_problem or self.cfg.problem()

    # -- reading -------------------------------------------------------------------------------------
    def records(self, limit: int | None = None) -> list[RolloutState]:
        """The rollouts recorded in the state directory, newest first; with `limit`, only the most recently
        written ones are read (the page polls this every second; old records pile up)."""
        paths = []
        for path in self.store.root.glob("*.json"):
            try:
                paths.append((path.stat().st_mtime, path))
            except OSError:
                continue
        paths.sort(reverse=True)
        out = []
        for _, path in paths[:limit] if limit is not None else paths:
            try:
                out.append(self.store.load(path.stem))
            except RolloutStoreError:
                continue  # a record being written or broken: `rollout status` says which
        out.sort(key=lambda s: s.created, reverse=True)
        return out

    def view(self, limit: int = 10) -> dict[str, Any]:
        """The records as the page draws them. Read from disk, ours too: the engine saves every change, and
        its in-memory state may be mid-tick (or its lock held by rollback commands for seconds)."""
        rows = [rollout_view(st, self._runner(st.id), self.owner, self._foreign(st)) for st in self.records(limit)]
        return {"ok": True, "rollouts": rows, "problem": self.problem(), "owner": self.owner, "error": self.error,
                "state_dir": str(self.store.root)}

    def _runner(self, rollout_id: str) -> dict[str, Any] | None:
        """The live claim of a rollout (ours included), else None."""
        h = self.store.claim(rollout_id, self.owner).holder()
        if h is not None and time.time() - float(h.get("heartbeat", 0)) < CLAIM_TTL_S:
            return h
        return None

    def _foreign(self, st: RolloutState) -> str | None:
        """Why this dashboard cannot run `st` (another broker or prefix), else None."""
        if st.settings.prefix != self.cfg.topics.prefix:
            return f"recorded for topic prefix {st.settings.prefix!r}"
        if _broker_key(st.settings.broker) != _broker_key(self.cfg.broker_url):
            return f"recorded for broker {st.settings.broker}"
        return None

    # -- operator ------------------------------------------------------------------------------------
    def begin(self, info: BundleInfo, req: StartRequest) -> RolloutState:
        """Plan a rollout of `info` on the nodes online now, record it, and run it."""
        with self._lock:
            problem = self.problem()
            if problem or self.link is None:
                raise RolloutsError(problem or "not connected to a broker", 503)
            try:
                parse_waves(req.waves)
            except WaveSpecError as exc:
                raise RolloutsError(f"waves: {exc}") from None
            busy = [s for s in self.records() if not s.done]
            if busy:
                raise RolloutsError(f"rollout {busy[0].id} is not over ({busy[0].phase}): resume or abort it first",
                                    409)
            state, copy = self._plan(info, req)
            self.store.save(state)
            self.store.set_current(state.id)
            try:
                self._adopt(state, 0.0)
            except RolloutsError:
                shutil.rmtree(copy, ignore_errors=True)
                raise
            return state

    def _plan(self, info: BundleInfo, req: StartRequest) -> tuple[RolloutState, Path]:
        assert self.link is not None and self.cfg.key is not None
        copy = self.store.root / "bundles" / f"{info.name}-v{info.version}-{uuid.uuid4().hex[:8]}"
        try:
            verified_copy(Path(info.path), copy, self.cfg.keyring())
            u = urlparse(self.cfg.broker_url)
            settings = RolloutSettings(
                bundle=str(copy.resolve()), broker=_recorded_url(self.cfg.broker_url), key=str(self.cfg.key.resolve()),
                http_base=self.cfg.files_base(info), prefix=self.cfg.topics.prefix,
                username=unquote(u.username) if u.username else None,
                upload=str(self.cfg.upload_dir.resolve()) if self.cfg.upload_dir else None,
                ca=str(self.cfg.ca_file.resolve()) if self.cfg.ca_file else None, target=req.target.strip(),
                waves_spec=req.waves, rollback_on_halt=req.rollback_on_halt)
            return create(settings, req.thresholds(), self.link.known()), copy
        except (RolloutError, PlanError, ValueError) as exc:
            shutil.rmtree(copy, ignore_errors=True)
            raise RolloutsError(str(exc).splitlines()[-1]) from None

    def control(self, rollout_id: str, action: str, rollback: bool = False) -> str:
        """pause | resume | abort, whichever process runs the rollout (as `edge-builder rollout ACTION`)."""
        if action not in ("pause", "resume", "abort"):
            raise RolloutsError(f"unknown action {action!r}")
        with self._lock:
            try:
                st = self.store.load(rollout_id)
            except RolloutStoreError as exc:
                raise RolloutsError(str(exc), 404) from None
            if st.done:
                raise RolloutsError(f"rollout {st.id} is already {st.phase}", 409)
            runner = self._runner(st.id)
            if runner is not None:  # a live runner (this dashboard or a CLI) applies it within a second
                self.store.request(st.id, action, rollback)
                return f"{action} requested from the runner {runner.get('owner')}"
            if action == "pause":
                set_phase(st, "paused", "paused by the operator (no runner)", time.time())
                self.store.save(st)
                return f"rollout {st.id} paused"
            why = self._foreign(st) or self.link_problem
            if why:
                raise RolloutsError(f"this dashboard cannot run {st.id}: {why}", 409)
            self.store.request(st.id, action, rollback)  # the runner's first tick applies it
            self._adopt(st, 0.0)
            return f"{action}: rollout {st.id} now runs in this dashboard"

    # -- the runner ----------------------------------------------------------------------------------
    def _adopt(self, st: RolloutState, delay: float) -> None:
        """Take the rollout's claim and run its engine in the runner thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RolloutsError(f"this dashboard already runs a rollout ({self._running_id()})", 409)
        assert self.link is not None
        s = st.settings
        try:
            engine = RolloutEngine(st, self.store, self.link, Announcer.for_rollout(s),
                                   claim=self.store.claim(st.id, self.owner))
            assert engine.claim is not None
            engine.claim.acquire()
        except (PublishError, ClaimError) as exc:
            raise RolloutsError(str(exc), 409) from None
        self._engine, self.error = engine, None
        self._thread = threading.Thread(target=self._run, args=(engine, delay), name="dashboard-rollout",
                                        daemon=True)
        self._thread.start()

    def _running_id(self) -> str | None:
        return self._engine.state.id if self._engine is not None else None

    def _run(self, engine: RolloutEngine, delay: float) -> None:
        assert engine.claim is not None
        try:
            if delay > 0:
                engine.claim.heartbeat()
                self._stop.wait(delay)
            if not self._stop.is_set():
                engine.run(stop=self._stop)
        except Exception as exc:  # noqa: BLE001 - the runner thread must say why it stopped, never die silently
            self.error = f"rollout {engine.state.id} stopped: {exc}"
        finally:
            engine.claim.release()
            with self._lock:
                self._engine = None


__all__ = ["RolloutsError", "StagedRollouts", "StartRequest"]
