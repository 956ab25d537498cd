"""The over-the-air model update state machine (see docs/UPDATES.md).

    announcement ─► verify ─► download ─► activate (2nd engine + golden self-test) ─► swap ─► trial ─► commit
                       │          │               │                                            │
                       └ rejected └ failed        └ rolled_back                                └ rolled_back

Threads: the MQTT callback only enqueues (`on_announcement`, `submit_command`); one worker thread does
every slow step; the inference thread only calls `on_frame` (cheap bookkeeping).

Where each part lives: threads, the announcement path up to the download, and commands here; the
signature and policy checks in agent.updates.verify; activate → commit in agent.updates.switch;
persisted state and status reports in agent.updates.ledger; the preflight child, the golden self-test
and the trial monitor in agent.updates.preflight / .golden / .trial.

Persistence: every step that matters after a crash is written to the store's state.json atomically
*before* it takes effect (pending phase before the swap, commit record before closing the old engine).
On restart `ModelStore.recover` rolls back anything uncommitted (Mender's rule).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import __version__ as AGENT_VERSION
from agent.inference.frames import EngineLike, FrameResult
from agent.protocol.manifest import Manifest
from agent.protocol.messages import (
    Announcement,
    CommandRequest,
    CommandResponse,
    UpdateState,
)
from agent.protocol.topics import Topics
from agent.security.bundle import Bundle, BundleError
from agent.security.signing import Keyring, SignatureError, SignatureFile
from agent.updates.download import DownloadError, DownloadLimits, download_bundle
from agent.updates.errors import UpdateFailed, UpdateRejected
from agent.updates.ledger import Publish
from agent.updates.store import (
    ModelRecord,
    ModelStore,
    PendingUpdate,
    StoreError,
    StoreState,
    UpdatesConfig,
    describe_os_error,
)
from agent.updates.switch import LoadEngine, ModelSwitch, SwapEngine
from agent.updates.verify import authenticate, check_manifest

log = logging.getLogger(__name__)


@dataclass
class _Job:
    kind: str  # "announce" | "command"
    payload: bytes = b""
    topic: str = ""
    request: CommandRequest | None = None
    reply: Callable[[CommandResponse], None] | None = None


class Updater(ModelSwitch):
    """Owns the model store and the update worker thread; the service owns the engines' pipeline."""

    def __init__(
        self,
        *,
        node: str,
        groups: list[str],
        topics: Topics,
        store: ModelStore,
        keyring: Keyring,
        config: UpdatesConfig,
        load_engine: LoadEngine,
        swap_engine: SwapEngine,
        publish: Publish,
        on_change: Callable[[], object] | None = None,
        agent_version: str = AGENT_VERSION,
    ) -> None:
        self.node = node
        self.groups = list(groups)
        self.topics = topics
        self.store = store
        self.keyring = keyring
        self.cfg = config
        self.load_engine = load_engine
        self.swap_engine = swap_engine
        self.publish = publish
        self.on_change = on_change
        self.agent_version = agent_version
        self.state = StoreState()
        self.engine = None
        self.bundle = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._trial = None
        self._baseline = deque(maxlen=120)
        self.last_status = None
        self.on_transition = None  # test/bench hook, see UpdateLedger
        self.timings = {}

    # -- startup -----------------------------------------------------------------------------
    def startup(self, fallback: Path | None = None) -> Bundle | None:
        """Recover the store and return the committed bundle to run (seeding it from `fallback`).

        Raises StoreError when the store cannot be used at all; BundleError when nothing runnable exists.
        """
        self.state = self.store.recover(self.node)
        st = self.state
        damaged: list[str] = []
        for rec in reversed(list(st.committed)):
            try:
                bundle = Bundle.load(self.store.version_dir(rec.version), self.keyring)
            except (BundleError, SignatureError) as exc:
                damaged.append(f"v{rec.version}: {exc}")
                continue
            if st.current is None or st.current.version != rec.version:
                st.previous, st.current = st.current, rec
                self.store.save_state(st)
            if damaged:
                self._status(UpdateState.FAILED, name=rec.name, version=rec.version,
                             reason=f"committed model damaged on disk ({'; '.join(damaged)}); running v{rec.version}")
            self.bundle = bundle
            return bundle
        if fallback is None:
            if damaged:
                raise BundleError(f"no runnable committed model: {'; '.join(damaged)}")
            return None
        bundle = Bundle.load(fallback, self.keyring)
        m = bundle.manifest
        self.store.install_copy(fallback, m.version)
        rec = ModelRecord(name=m.name, version=m.version)
        st.current, st.committed = rec, [rec]
        st.high_water = max(st.high_water, m.version)
        self.store.save_state(st)
        self.bundle = Bundle.load(self.store.version_dir(m.version), self.keyring)
        return self.bundle

    def set_running(self, engine: EngineLike, bundle: Bundle | None = None) -> None:
        """Tell the updater which engine the pipeline runs now (after the service loaded it)."""
        self.engine = engine
        if bundle is not None:
            self.bundle = bundle

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="updater", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(None)
            if self._trial:
                self._trial.done.set()  # end the wait; an unfinished trial is not committed (see _swap_and_trial)
            self._thread.join(timeout)
            self._thread = None

    # -- entry points from other threads --------------------------------------------------------
    def on_announcement(self, payload: bytes, topic: str = "") -> None:
        """MQTT callback: enqueue only (never block paho's network thread)."""
        self._queue.put(_Job("announce", payload=bytes(payload), topic=topic))

    def submit_command(self, request: CommandRequest, reply: Callable[[CommandResponse], None]) -> None:
        self._queue.put(_Job("command", request=request, reply=reply))

    def on_frame(self, result: FrameResult) -> None:
        """Per-frame hook from the inference thread: trial bookkeeping and the latency baseline.

        `result.outputs` must be attached for frames of the engine on trial (see `trial_engine`)."""
        trial = self._trial
        if trial is not None and trial.matches(result):
            trial.feed(result)
        elif result.stats.error is None and trial is None:
            self._baseline.append(result.latency_s * 1000)

    @property
    def trial_engine(self) -> object | None:
        """The engine on trial right now (the pipeline hook fetches its raw outputs only then)."""
        t = self._trial
        return t.engine if t is not None else None

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.02)
        return False

    # -- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if job.kind == "announce":
                    self._handle_announcement(job.payload, job.topic)
                elif job.kind == "command" and job.request is not None and job.reply is not None:
                    job.reply(self._handle_command(job.request))
            except Exception:  # noqa: BLE001 - the worker must survive anything; inference goes on
                log.exception("update worker: unexpected error")
            finally:
                self._queue.task_done()

    # -- verify -------------------------------------------------------------------------------
    def authenticate(self, payload: bytes) -> tuple[Announcement, Manifest]:
        """Signature by a pinned key over the exact manifest bytes, then (only then) parse them."""
        return authenticate(payload, self.keyring)

    def check(self, m: Manifest) -> None:
        """The policy checks on an authenticated manifest; raise UpdateRejected with the reason."""
        check_manifest(m, node=self.node, groups=self.groups, state=self.state,
                       max_bundle_bytes=self.cfg.max_bundle_bytes, agent_version=self.agent_version)

    def verify(self, payload: bytes) -> tuple[Announcement, Manifest]:
        ann, m = self.authenticate(payload)
        self.check(m)
        return ann, m

    # -- the update path ----------------------------------------------------------------------
    def _handle_announcement(self, payload: bytes, topic: str) -> None:
        self.timings = {"announce": time.monotonic()}
        try:
            ann, m = self.authenticate(payload)
        except UpdateRejected as exc:
            self._status(UpdateState.REJECTED, reason=str(exc), persist=True)
            return
        cur = self.state.current
        if cur is not None and (m.name, m.version) == (cur.name, cur.version):
            # The retained announcement of the model we run comes back on every reconnect: nothing to do.
            log.debug("announcement of the running %s v%d ignored", m.name, m.version)
            return
        self._status(UpdateState.VERIFYING, name=m.name, version=m.version)
        try:
            self.check(m)
        except UpdateRejected as exc:
            self._status(UpdateState.REJECTED, name=m.name, version=m.version, reason=str(exc), persist=True)
            return
        try:
            self._download(ann, m)
        except UpdateFailed as exc:
            self._status(UpdateState.FAILED, name=m.name, version=m.version, reason=str(exc), persist=True)
            self._clear_pending(keep_staging=True)
            return
        except UpdateRejected as exc:
            self._status(UpdateState.REJECTED, name=m.name, version=m.version, reason=str(exc), persist=True)
            self._clear_pending(keep_staging=False)
            return
        self.timings["downloaded"] = time.monotonic()
        try:
            with self._lock:
                # From here the version counts as seen: a retained re-delivery after a rollback is a replay.
                self.state.high_water = max(self.state.high_water, m.version)
                self.state.pending = PendingUpdate(name=m.name, version=m.version, phase="activating")
            self._save()
            self.store.promote(m.version)
        except StoreError as exc:
            self._status(UpdateState.FAILED, name=m.name, version=m.version, reason=str(exc), persist=True)
            self._clear_pending(keep_staging=False)
            return
        self._switch_to(m.name, m.version, reason="update", run_trial=True)

    def _download(self, ann: Announcement, m: Manifest) -> Path:
        need = m.total_size() + self.cfg.min_free_bytes
        try:
            self.store.ensure_dirs()
            free = shutil.disk_usage(self.store.root).free
        except (OSError, StoreError) as exc:
            raise UpdateFailed(str(exc)) from None
        staging = self.store.staging_dir(m.version)
        already = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.is_dir() else 0
        if free + already < need:
            raise UpdateFailed(f"not enough disk space: need {need - already} bytes free, have {free}")
        with self._lock:
            self.state.pending = PendingUpdate(name=m.name, version=m.version, phase="downloading")
        try:
            self._save()
        except StoreError as exc:
            raise UpdateFailed(str(exc)) from None
        self.store.clear_staging(keep=m.version)
        self._status(UpdateState.DOWNLOADING, name=m.name, version=m.version, progress=0.0)
        last = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 and total:
                last[0] = now
                self._status(UpdateState.DOWNLOADING, name=m.name, version=m.version, progress=min(1.0, done / total))

        sig = SignatureFile(key_id=ann.key_id, signature_b64=ann.signature_b64).model_dump_json(indent=2).encode()
        limits = DownloadLimits(self.cfg.connect_timeout_s, self.cfg.read_timeout_s, self.cfg.total_timeout_s,
                                self.cfg.download_retries)
        try:
            download_bundle(ann.base_url, m, ann.manifest_bytes(), sig, staging, limits, progress)
        except DownloadError as exc:
            raise UpdateFailed(f"download failed: {exc}") from None
        try:
            Bundle.load(staging, self.keyring)  # signature and every sha256 once more, from disk
        except (BundleError, SignatureError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UpdateRejected(f"downloaded bundle invalid: {exc}") from None
        except OSError as exc:
            raise UpdateFailed(describe_os_error(exc, "checking the download")) from None
        self._status(UpdateState.DOWNLOADING, name=m.name, version=m.version, progress=1.0)
        return staging

    # -- commands -----------------------------------------------------------------------------
    def _handle_command(self, req: CommandRequest) -> CommandResponse:
        ok, err, result = True, None, {}
        if req.command == "inventory":
            result = self.inventory()
        elif req.command == "status":
            result = self.status()
        elif req.command == "rollback":
            prev = self.state.previous
            if prev is None or prev.version not in self.store.installed_versions():
                ok, err = False, "no previous version on disk to roll back to"
            else:
                err = self._manual_switch(prev.name, prev.version, "rollback")
                ok = err is None
            result = self.status()
        elif req.command == "pin":
            if req.version is None:
                with self._lock:
                    self.state.pinned = None
                self._save()
                self._notify()
            else:
                installed = self.store.installed_versions()
                if req.version not in installed:
                    ok, err = False, f"v{req.version} is not on disk (have {installed})"
                elif self.state.current and self.state.current.version == req.version:
                    with self._lock:
                        self.state.pinned = req.version
                    self._save()
                    self._notify()
                else:
                    name = self.state.current.name if self.state.current else "model"
                    err = self._manual_switch(name, req.version, "pin")
                    ok = err is None
            result = self.status()
        return CommandResponse(node=self.node, command=req.command, ok=ok, result=result, error=err)


__all__ = ["Updater"]
