"""The update state a node keeps and shows: the persisted StoreState and the retained status.

`UpdateLedger` is the part of the `Updater` (agent.updates.updater) that owns the store's state.json
and publishes each transition; every other step of the state machine goes through it.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from typing import Any

from agent.protocol.messages import ModelRef, UpdateState, UpdateStatus
from agent.protocol.topics import Topics
from agent.updates.intake import RejectLimiter
from agent.updates.store import ModelStore, StoreError, StoreState

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], object]  # topic, payload, retain


class UpdateLedger:
    """Persisted state plus status reporting; the attributes are set by `Updater.__init__`."""

    node: str
    topics: Topics
    store: ModelStore
    publish: Publish
    on_change: Callable[[], object] | None
    state: StoreState
    last_status: UpdateStatus | None
    # Test/bench hook: called with the state name at each transition (the fault test kills here).
    on_transition: Callable[[UpdateState], None] | None
    _lock: threading.Lock
    _rejects: RejectLimiter

    # -- what the node's retained state shows ----------------------------------------------------
    def running_model(self) -> ModelRef | None:
        c = self.state.current
        return ModelRef(name=c.name, version=c.version) if c else None

    def previous_model(self) -> ModelRef | None:
        p = self.state.previous
        return ModelRef(name=p.name, version=p.version) if p else None

    def last_result(self) -> UpdateStatus | None:
        return self.state.last_result

    def inventory(self) -> dict[str, Any]:
        with self._lock:
            st = self.state.model_copy(deep=True)
        return {
            "current": st.current.model_dump() if st.current else None,
            "previous": st.previous.model_dump() if st.previous else None,
            "high_water": st.high_water,
            "pinned": st.pinned,
            "versions": self.store.inventory(st),
        }

    def status(self) -> dict[str, Any]:
        with self._lock:
            st = self.state.model_copy(deep=True)
        return {
            "running": st.current.model_dump() if st.current else None,
            "previous": st.previous.model_dump() if st.previous else None,
            "pending": st.pending.model_dump(mode="json") if st.pending else None,
            "last_result": st.last_result.model_dump(mode="json") if st.last_result else None,
            "high_water": st.high_water,
            "pinned": st.pinned,
        }

    # -- persistence and reporting -----------------------------------------------------------
    def _status(self, state: UpdateState, *, name: str | None = None, version: int | None = None,
                reason: str | None = None, progress: float | None = None, persist: bool = False) -> UpdateStatus:
        st = UpdateStatus(node=self.node, name=name, version=version, state=state, reason=reason,
                          progress=progress,
                          running_version=self.state.current.version if self.state.current else None)
        self.last_status = st
        if persist:
            with self._lock:
                self.state.last_result = st
            try:
                self.store.save_state(self.state)
            except StoreError as exc:
                log.error("cannot persist update result: %s", exc)
        try:
            self.publish(self.topics.update(self.node), st.model_dump_json().encode(), True)
        except Exception:  # noqa: BLE001 - a broken link must not stop the state machine
            log.exception("publishing update status failed")
        level = logging.WARNING if state in (UpdateState.REJECTED, UpdateState.FAILED,
                                             UpdateState.ROLLED_BACK) else logging.INFO
        log.log(level, "update %s v%s: %s%s", name or "?", version if version is not None else "?", state.value,
                f" ({reason})" if reason else "")
        if self.on_transition is not None:
            self.on_transition(state)
        if persist:
            self._notify_quietly()
        return st

    def _reject(self, reason: str, name: str | None = None, version: int | None = None) -> None:
        """A refused announcement: reported (rate-limited), remembered in memory only, no disk write.

        Anyone who can publish on the announce topic could otherwise make the node write and fsync
        its state file, log and publish at the rate of their flood."""
        report, unreported = self._rejects.allow()
        if not report:
            log.debug("announcement rejected (not reported: rate limit): %s", reason)
            return
        if unreported:
            reason += f" [{unreported} more rejected announcements not reported]"
        st = self._status(UpdateState.REJECTED, name=name, version=version, reason=reason)
        with self._lock:
            self.state.last_result = st
        self._notify_quietly()

    def _save(self) -> None:
        with self._lock:
            snapshot = self.state.model_copy(deep=True)
        self.store.save_state(snapshot)

    def _clear_pending(self, keep_staging: bool) -> None:
        with self._lock:
            pend = self.state.pending
            self.state.pending = None
        if pend and not keep_staging:
            shutil.rmtree(self.store.staging_dir(pend.version), ignore_errors=True)
        try:
            self._save()
        except StoreError as exc:
            log.error("%s", exc)

    def _notify_quietly(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # noqa: BLE001 - a broken link must not stop the state machine
                log.exception("on_change callback failed")

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()


__all__ = ["Publish", "UpdateLedger"]
