"""Switching the running model to an installed version: activate, swap, trial, commit or roll back.

    activate (2nd engine beside the running one + golden self-test) ─► swap ─► trial ─► commit
            │                                                                    │
            └ rolled_back                                                        └ rolled_back

The running engine is never closed before the new one has been committed, so a rollback is a swap
back, not a reload. `pending` is persisted before each step takes effect (see agent.updates.store).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.inference.frames import EngineLike
from agent.protocol.messages import UpdateState, UpdateStatus
from agent.security.bundle import Bundle, BundleError, parse_manifest
from agent.security.signing import Keyring, SignatureError
from agent.updates.errors import ActivationFailed
from agent.updates.golden import run_golden
from agent.updates.ledger import UpdateLedger
from agent.updates.preflight import preflight
from agent.updates.store import ModelRecord, PendingUpdate, StoreError, StoreState, UpdatesConfig
from agent.updates.trial import TrialMonitor

log = logging.getLogger(__name__)

LoadEngine = Callable[[Bundle], EngineLike]
SwapEngine = Callable[[EngineLike], Any]  # installs `new` between two frames, returns the old engine


class ModelSwitch(UpdateLedger):
    """The activate-to-commit steps of the `Updater` (agent.updates.updater), which sets these attributes."""

    keyring: Keyring
    cfg: UpdatesConfig
    load_engine: LoadEngine
    swap_engine: SwapEngine
    engine: EngineLike | None
    bundle: Bundle | None
    timings: dict[str, float]
    _stopping: threading.Event
    _trial: TrialMonitor | None
    _baseline: deque[float]

    def _switch_to(self, name: str, version: int, reason: str, run_trial: bool) -> str | None:
        """Activate installed `version`, swap it in, trial it, commit it. Returns an error or None.

        The caller has persisted `pending` (phase activating) already.
        """
        is_committed = any(r.version == version for r in self.state.committed)
        self._status(UpdateState.ACTIVATING, name=name, version=version)
        try:
            bundle, new = self._activate(version, first_time=not is_committed)
        except (ActivationFailed, BundleError, SignatureError) as exc:
            return self._abort(name, version, str(exc), remove=not is_committed)
        # Persist "trial" before the swap: a crash from here on is rolled back at restart.
        with self._lock:
            self.state.pending = PendingUpdate(name=name, version=version, phase="trial", reason=reason)
        try:
            self._save()
        except StoreError as exc:
            _close_quietly(new)
            return self._abort(name, version, str(exc), remove=not is_committed, state=UpdateState.FAILED)
        return self._swap_and_trial(name, version, bundle, new, reason, run_trial, is_committed)

    def _activate(self, version: int, first_time: bool) -> tuple[Bundle, EngineLike]:
        """Load `version` as a second engine and self-test it; raises ActivationFailed (or a bundle error).

        `first_time`: a version never committed before is first opened in a child process (preflight).
        """
        # A version committed before was verified then; expiry since then does not take it away (rollback/pin).
        bundle = Bundle.load(self.store.version_dir(version), self.keyring if first_time else self.keyring.installed())
        if self.cfg.preflight and first_time:
            preflight(bundle)
        try:
            new = self.load_engine(bundle)
        except Exception as exc:  # noqa: BLE001 - corrupt .tflite, wrong shapes, runtime errors
            raise ActivationFailed(f"cannot load model: {type(exc).__name__}: {exc}") from None
        try:
            golden_ms = run_golden(new, bundle)
        except ActivationFailed:
            _close_quietly(new)
            raise
        self.timings["activated"] = time.monotonic()
        log.info("v%d passed its self-test (%.1f ms)", version, golden_ms)
        return bundle, new

    def _swap_and_trial(self, name: str, version: int, bundle: Bundle, new: EngineLike, reason: str,
                        run_trial: bool, is_committed: bool) -> str | None:
        baseline = statistics.median(self._baseline) if len(self._baseline) >= 5 else None
        monitor = TrialMonitor(new, version, self.cfg, baseline)
        self._trial = monitor
        old = self.swap_engine(new)
        self.timings["swapped"] = time.monotonic()
        prev_engine = self.engine
        self.engine = new
        max_wait = max(self.cfg.trial_seconds, self.cfg.trial_max_wait_s)
        self._status(UpdateState.TRIAL, name=name, version=version,
                     reason=f"watching for {self.cfg.trial_frames} clean frames (at most {max_wait:.0f} s)")
        verdict = None
        if run_trial:
            started = time.monotonic()
            monitor.done.wait(max_wait)
            verdict = monitor.verdict()
        self._trial = None
        if self._stopping.is_set() and verdict is None and run_trial and monitor.clean < self.cfg.trial_frames:
            # Shutting down mid-trial: leave `pending` persisted; the next start rolls it back (crash rule).
            log.info("stopping during the trial of v%d: not committed", version)
            return "stopped during trial"
        if run_trial and verdict is None:
            verdict = monitor.missing_evidence(time.monotonic() - started)
        back = old if old is not None else prev_engine
        if verdict is not None:
            if back is not None:
                self.swap_engine(back)
                self.engine = back
            self._baseline.clear()
            _close_quietly(new)
            return self._abort(name, version, f"trial failed: {verdict}", remove=not is_committed)
        return self._commit(name, version, bundle, back, reason, monitor)

    def _commit(self, name: str, version: int, bundle: Bundle, old: EngineLike | None, reason: str,
                monitor: TrialMonitor) -> str | None:
        rec = ModelRecord(name=name, version=version)
        # Without a trial (rollback, pin): a version that was committed before, self-tested just now.
        note = f"{monitor.clean} trial frames clean" if monitor.clean else "known-good version, self-tested"
        if reason != "update":
            note = f"{reason}: {note}"
        status = UpdateStatus(node=self.node, name=name, version=version, state=UpdateState.COMMITTED,
                              reason=note, running_version=version)
        with self._lock:
            before = self.state.model_copy(deep=True)
            st = self.state
            if st.current is not None and st.current.version != version:
                st.previous = st.current
            st.current = rec
            st.committed = [r for r in st.committed if r.version != version] + [rec]
            st.pending = None
            st.last_result = status
            if reason == "pin":
                st.pinned = version
        try:
            # The one atomic write that makes the new version the one a restart runs.
            self._save()
        except StoreError as exc:
            return self._undo_commit(name, version, before, old, monitor, exc)
        self.bundle = bundle
        self._baseline.clear()
        self.timings["committed"] = time.monotonic()
        self._status(UpdateState.COMMITTED, name=name, version=version, reason=note)
        self._notify()
        if old is not None and old is not self.engine:
            _close_quietly(old)
        try:
            self.store.prune(self.state)
            with self._lock:
                self.store.trim_committed(self.state)
            self._save()
        except (OSError, StoreError) as exc:
            log.warning("pruning old versions failed: %s", exc)
        return None

    def _undo_commit(self, name: str, version: int, before: StoreState, old: EngineLike | None,
                     monitor: TrialMonitor, exc: StoreError) -> str:
        """The commit record could not be written: back to the state and the engine from before."""
        with self._lock:
            self.state = before
            self.state.pending = None
        if old is not None:
            self.swap_engine(old)
            self.engine = old
        if monitor.engine is not old:
            _close_quietly(monitor.engine)  # type: ignore[arg-type]
        return self._abort(name, version, f"cannot commit: {exc}", remove=False, state=UpdateState.FAILED)

    def _abort(self, name: str, version: int, reason: str, remove: bool,
               state: UpdateState = UpdateState.ROLLED_BACK) -> str:
        with self._lock:
            self.state.pending = None
        if remove:
            self.store.remove_version(version)
        self._status(state, name=name, version=version, reason=reason, persist=True)
        return reason

    def _manual_switch(self, name: str, version: int, reason: str) -> str | None:
        """Rollback or pin to an installed version (a command, not an announcement)."""
        try:
            rec_name = parse_manifest((self.store.version_dir(version) / "manifest.json").read_bytes()).name
        except (OSError, BundleError):
            rec_name = name
        with self._lock:
            self.state.pending = PendingUpdate(name=rec_name, version=version, phase="activating", reason=reason)
        try:
            self._save()
        except StoreError as exc:
            with self._lock:
                self.state.pending = None
            return str(exc)
        # A known-good version: self-test, swap and commit without a trial wait.
        return self._switch_to(rec_name, version, reason=reason, run_trial=False)


def _close_quietly(engine: EngineLike) -> None:
    try:
        engine.close()
    except Exception:  # noqa: BLE001
        log.exception("closing an engine failed")


__all__ = ["LoadEngine", "ModelSwitch", "SwapEngine"]
