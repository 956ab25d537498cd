"""The over-the-air model update state machine (see docs/UPDATES.md).

    announcement ─► verify ─► download ─► activate (2nd engine + golden self-test) ─► swap ─► trial ─► commit
                       │          │               │                                            │
                       └ rejected └ failed        └ rolled_back                                └ rolled_back

Threads: the MQTT callback only enqueues (`on_announcement`, `submit_command`); one worker thread does
every slow step; the inference thread only calls `on_frame` (cheap bookkeeping).

Where each part lives: threads and the announcement path up to the download here; intake (inbox,
rejection rate limit, clock gate), verify (signature, policy), switch (activate → commit), manual
(commands), ledger (state, status), preflight / golden / trial: agent.updates.<name>.

Persistence: every step that matters after a crash is written to the store's state.json atomically
*before* it takes effect (pending phase before the swap, commit record before closing the old engine).
On restart `ModelStore.recover` rolls back anything uncommitted (Mender's rule).
"""

from __future__ import annotations

import functools
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
from agent.system.clock import clock_status
from agent.updates.download import DownloadError, DownloadLimits, download_bundle
from agent.updates.errors import UpdateFailed, UpdateRejected
from agent.updates.intake import AnnouncementInbox, ClockGate, ClockSource, RejectLimiter
from agent.updates.ledger import Publish
from agent.updates.manual import ManualControl
from agent.updates.store import (
    ModelRecord,
    ModelStore,
    PendingUpdate,
    StoreError,
    StoreState,
    UpdatesConfig,
    describe_os_error,
)
from agent.updates.switch import LoadEngine, SwapEngine
from agent.updates.verify import authenticate, check_expiry, check_manifest, preferred_backend

log = logging.getLogger(__name__)


@dataclass
class _Job:
    kind: str  # "announce" (its payload waits in the inbox) | "command"
    topic: str = ""
    request: CommandRequest | None = None
    reply: Callable[[CommandResponse], None] | None = None


class Updater(ManualControl):
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
        clock: ClockSource = clock_status,
        backend: str | None = None,
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
        self.backend = backend  # whose files a v2 manifest makes us fetch; None: the running engine's preference
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
        self._inbox = AnnouncementInbox()
        self._rejects = RejectLimiter()
        self._clock = ClockGate(clock, config.clock_sync, ttl_s=min(5.0, config.clock_recheck_s))
        self._held: tuple[bytes, str] | None = None  # the newest announcement waiting for clock sync

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
                bundle = Bundle.load(self.store.version_dir(rec.version), self.keyring.installed())
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
        """MQTT callback: enqueue only (never block paho's network thread).

        Only the newest pending announcement per topic is kept (a retained topic means its latest
        message): a flood costs one queue entry per topic, see agent.updates.intake."""
        if self._inbox.put(topic, payload):
            self._queue.put(_Job("announce", topic=topic))

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

    def backlog(self) -> int:
        """Jobs waiting for the worker (announcements count once per topic)."""
        return self._queue.qsize()

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
            try:
                # A held announcement wakes the worker every clock_recheck_s to look at the clock again.
                job = self._queue.get(timeout=self.cfg.clock_recheck_s if self._held else None)
            except queue.Empty:
                self._guarded(self._recheck_held)
                continue
            try:
                if job is None:
                    return
                self._guarded(functools.partial(self._work, job))
            finally:
                self._queue.task_done()

    def _guarded(self, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - the worker must survive anything; inference goes on
            log.exception("update worker: unexpected error")

    def _work(self, job: _Job) -> None:
        if job.kind == "announce":
            payload = self._inbox.take(job.topic)
            if isinstance(payload, int):
                self._reject(f"announcement of {payload} bytes, over the limit of {self._inbox.max_bytes}")
            elif payload is not None:
                self._handle_announcement(payload, job.topic)
        elif job.kind == "command" and job.request is not None and job.reply is not None:
            job.reply(self._handle_command(job.request))

    def _recheck_held(self) -> None:
        held = self._held
        if held is not None and self._clock.why_not() is None:
            self._held = None
            log.info("clock synchronized: deciding the held announcement")
            self._handle_announcement(*held)

    # -- verify -------------------------------------------------------------------------------
    def authenticate(self, payload: bytes) -> tuple[Announcement, Manifest]:
        """Signature by a pinned key over the exact manifest bytes, then (only then) parse them."""
        return authenticate(payload, self.keyring)

    def check(self, m: Manifest) -> None:
        """The policy checks on an authenticated manifest; raise UpdateRejected with the reason.

        The expiry is compared with the clock as it is: the worker holds announcements until the
        clock is synchronized before it gets here (see `_handle_announcement`)."""
        self._check_undated(m)
        check_expiry(m)

    def _check_undated(self, m: Manifest) -> None:
        check_manifest(m, node=self.node, groups=self.groups, state=self.state,
                       max_bundle_bytes=self.cfg.max_bundle_bytes, agent_version=self.agent_version,
                       require_expires=self.cfg.require_expires, backend=self.fetch_backend())

    def fetch_backend(self) -> str | None:
        """The backend whose `needs` list this node fetches (see agent.updates.verify.preferred_backend)."""
        return self.backend or preferred_backend(self.engine)

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
            self._reject(str(exc))
            return
        cur = self.state.current
        if cur is not None and (m.name, m.version) == (cur.name, cur.version):
            # The retained announcement of the model we run comes back on every reconnect: nothing to do.
            log.debug("announcement of the running %s v%d ignored", m.name, m.version)
            return
        try:
            self._check_undated(m)
            if m.expires is not None and self._hold(payload, topic, m):
                return
            check_expiry(m)
        except UpdateRejected as exc:
            self._reject(str(exc), m.name, m.version)
            return
        self._status(UpdateState.VERIFYING, name=m.name, version=m.version)
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

    def _hold(self, payload: bytes, topic: str, m: Manifest) -> bool:
        """Keep an announcement whose expiry this clock cannot judge yet; True when held.

        A clock behind would take an expired manifest, one ahead would refuse a fresh one: decide neither
        way until it is synchronized (the worker re-checks every clock_recheck_s)."""
        why = self._clock.why_not()
        if why is None:
            return False
        fresh = self._held is None or self._held[0] != payload
        self._held = (payload, topic)
        if fresh:
            self._status(UpdateState.ANNOUNCED, name=m.name, version=m.version,
                         reason=f"held: waiting for clock sync to check its expiry; {why}")
        return True

    def _download(self, ann: Announcement, m: Manifest) -> Path:
        files = m.needed_files(self.fetch_backend())  # v1: every file; v2: this backend's list
        need = sum(f.size for f in files) + self.cfg.min_free_bytes
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
            download_bundle(ann.base_url, m, ann.manifest_bytes(), sig, staging, limits, progress, files=files)
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


__all__ = ["Updater"]
