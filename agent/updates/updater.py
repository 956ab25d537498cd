"""The over-the-air model update state machine (see docs/UPDATES.md).

    announcement ─► verify ─► download ─► activate (2nd engine + golden self-test) ─► swap ─► trial ─► commit
                       │          │               │                                            │
                       └ rejected └ failed        └ rolled_back                                └ rolled_back

Threads: the MQTT callback only enqueues (`on_announcement`, `submit_command`); one worker thread does
every slow step; the inference thread only calls `on_frame` (cheap bookkeeping). The running engine is
never closed before the new one has been committed, so a rollback is a swap back, not a reload.

Persistence: every step that matters after a crash is written to the store's state.json atomically
*before* it takes effect (pending phase before the swap, commit record before closing the old engine).
On restart `ModelStore.recover` rolls back anything uncommitted (Mender's rule).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from agent import __version__ as AGENT_VERSION
from agent.protocol.manifest import Manifest
from agent.protocol.messages import (
    Announcement,
    CommandRequest,
    CommandResponse,
    ModelRef,
    UpdateState,
    UpdateStatus,
)
from agent.protocol.topics import Topics
from agent.security.bundle import Bundle, BundleError, parse_manifest
from agent.security.signing import Keyring, SignatureError, SignatureFile
from agent.updates.download import DownloadError, DownloadLimits, download_bundle
from agent.updates.store import (
    ModelRecord,
    ModelStore,
    PendingUpdate,
    StoreError,
    StoreState,
    UpdatesConfig,
    describe_os_error,
)

log = logging.getLogger(__name__)


class EngineLike(Protocol):
    """What the updater needs from agent.inference.engine.Engine."""

    def invoke_raw(self, input: np.ndarray) -> list[np.ndarray]: ...  # noqa: A002 - mirrors Engine

    def close(self) -> None: ...


LoadEngine = Callable[[Bundle], EngineLike]
SwapEngine = Callable[[EngineLike], Any]  # installs `new` between two frames, returns the old engine
Publish = Callable[[str, bytes, bool], object]  # topic, payload, retain


@dataclass
class FrameReport:
    """One inference as the pipeline's per-frame hook reports it (see `Updater.on_frame`)."""

    latency_s: float
    engine: object | None = None  # the engine that ran the frame, when the pipeline knows it
    version: int | None = None  # else the model version that ran it
    outputs: Sequence[np.ndarray] | None = None
    error: str | None = None
    input: np.ndarray | None = None


class UpdateRejected(Exception):
    """Verification refused an announcement (state `rejected`)."""


class UpdateFailed(Exception):
    """A step failed before anything changed (state `failed`)."""


class ActivationFailed(Exception):
    """The new model could not be loaded or failed its self-test (state `rolled_back`)."""


def version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# -- preflight in a child process -----------------------------------------------------------------
# A malformed .tflite can crash the TFLite runtime natively (segfault), which no try/except catches:
# open every model file of a new bundle in a throwaway child process first.
_PREFLIGHT = r"""
import sys
import numpy as np
from agent.inference.tflite import Interpreter, require_runtime
require_runtime()
path, allocate = sys.argv[1], sys.argv[2] == "1"
it = Interpreter(model_path=path)
if allocate:
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    for o in it.get_output_details():
        it.get_tensor(o["index"])
print("ok")
"""


def preflight(bundle: Bundle, timeout: float = 60.0) -> None:
    """Raise ActivationFailed if a model file of `bundle` cannot be opened (and the CPU model run once)
    by the TFLite runtime in a child process. The Edge TPU model is only parsed (the TPU is ours)."""
    import subprocess
    import sys

    m = bundle.manifest
    checks = [(m.models.cpu, True)] + ([(m.models.edgetpu, False)] if m.models.edgetpu else [])
    for rel, allocate in checks:
        try:
            proc = subprocess.run([sys.executable, "-c", _PREFLIGHT, str(bundle.path(rel)), "1" if allocate else "0"],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ActivationFailed(f"cannot load model: {rel} hung the TFLite runtime for {timeout:.0f} s") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            if proc.returncode < 0:
                why = f"the TFLite runtime crashed (signal {-proc.returncode})"
            raise ActivationFailed(f"cannot load model: {rel}: {why}")


# -- golden self-test ------------------------------------------------------------------------------
def run_golden(engine: EngineLike, bundle: Bundle) -> float:
    """Run the bundle's golden input; raise ActivationFailed unless outputs match within tolerance
    and the (warm) latency is within budget. Returns the measured latency in ms.

    The expected file holds either the single output, or every output flattened and concatenated in
    the engine's output order (what the converter writes for multi-output models).
    """
    golden = bundle.manifest.golden
    if golden is None:
        return 0.0
    try:
        x = np.load(bundle.path(golden.input), allow_pickle=False)
        expected = np.load(bundle.path(golden.expected), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ActivationFailed(f"cannot read golden test files: {exc}") from None
    try:
        engine.invoke_raw(x)  # warm-up: the first invoke also primes caches before the swap
        t0 = time.perf_counter()
        outs = engine.invoke_raw(x)
        latency_ms = (time.perf_counter() - t0) * 1000
    except Exception as exc:  # noqa: BLE001 - any runtime error is a failed self-test
        raise ActivationFailed(f"self-test inference failed: {type(exc).__name__}: {exc}") from None
    got = _match_outputs(outs, expected)
    if got is None:
        shapes = [tuple(o.shape) for o in outs]
        raise ActivationFailed(f"self-test output shapes {shapes} do not match expected {tuple(expected.shape)}")
    a, b = got.astype(np.float64), expected.astype(np.float64).reshape(got.shape)
    if not np.all(np.isfinite(a)):
        raise ActivationFailed("self-test output contains NaN or Inf")
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    if err > golden.atol:
        raise ActivationFailed(f"self-test output differs from expected: max abs error {err:.3g} > atol {golden.atol}")
    if latency_ms > golden.max_latency_ms:
        raise ActivationFailed(
            f"self-test latency {latency_ms:.1f} ms over budget {golden.max_latency_ms:.0f} ms"
        )
    return latency_ms


def _match_outputs(outs: Sequence[np.ndarray], expected: np.ndarray) -> np.ndarray | None:
    if len(outs) == 1 and outs[0].size == expected.size:
        return np.asarray(outs[0])
    if sum(o.size for o in outs) == expected.size:
        return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outs])
    return None


# -- trial monitor ---------------------------------------------------------------------------------
@dataclass
class TrialMonitor:
    """Watches the frames of the engine on trial. `feed` runs on the inference thread: keep it cheap."""

    engine: object
    version: int
    cfg: UpdatesConfig
    baseline_ms: float | None
    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    errors: int = 0
    last_error: str | None = None
    nonfinite: int = 0
    constant: int = 0
    latencies: list[float] = field(default_factory=list)
    out_digests: set[bytes] = field(default_factory=set)
    in_digests: set[bytes] = field(default_factory=set)
    failure: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def matches(self, r: FrameReport) -> bool:
        return r.engine is self.engine if r.engine is not None else r.version == self.version

    def feed(self, r: FrameReport) -> None:
        if self.done.is_set():
            return
        self.frames += 1
        if r.error is not None:
            self.errors += 1
            self.last_error = r.error
            if self.errors > self.cfg.trial_max_error_frames:
                self._fail(f"inference error during trial: {r.error}")
                return
        else:
            self.latencies.append(r.latency_s * 1000)
        if r.outputs is not None:
            outs = [np.asarray(o) for o in r.outputs]
            if any(o.dtype.kind in "fc" and not np.all(np.isfinite(o)) for o in outs):
                self.nonfinite += 1
                self._fail(f"model produced NaN/Inf outputs on frame {self.frames} of its trial")
                return
            if outs and all(o.size and o.min() == o.max() for o in outs):
                self.constant += 1
            h = hashlib.blake2b(digest_size=8)
            for o in outs:
                h.update(np.ascontiguousarray(o).view(np.uint8).data)
            self.out_digests.add(h.digest())
        if r.input is not None and len(self.in_digests) < 2:
            self.in_digests.add(hashlib.blake2b(np.ascontiguousarray(r.input).view(np.uint8).data,
                                                digest_size=8).digest())
        if self.frames >= self.cfg.trial_frames:
            self.done.set()

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self.done.set()

    def verdict(self) -> str | None:
        """None when the trial passed, else why it failed."""
        if self.failure:
            return self.failure
        n_ok = self.frames - self.errors
        if n_ok >= 3 and self.constant == n_ok:
            return f"degenerate outputs: every output tensor constant on all {n_ok} trial frames"
        # The same outputs for every frame while the inputs changed: the model ignores its input.
        varied_inputs = len(self.in_digests) > 1 or not self.in_digests
        if n_ok >= 5 and len(self.out_digests) == 1 and varied_inputs:
            return f"degenerate outputs: identical on all {n_ok} trial frames although the frames differ"
        if self.baseline_ms and len(self.latencies) >= 5:
            med = statistics.median(self.latencies)
            bound = self.baseline_ms * self.cfg.trial_latency_factor + self.cfg.trial_latency_slack_ms
            if med > bound:
                return (f"latency regression: trial median {med:.1f} ms vs {self.baseline_ms:.1f} ms before "
                        f"(limit {bound:.1f} ms)")
        return None


# -- the updater -----------------------------------------------------------------------------------
@dataclass
class _Job:
    kind: str  # "announce" | "command"
    payload: bytes = b""
    topic: str = ""
    request: CommandRequest | None = None
    reply: Callable[[CommandResponse], None] | None = None


class Updater:
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
        self.engine: EngineLike | None = None
        self.bundle: Bundle | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._trial: TrialMonitor | None = None
        self._baseline: deque[float] = deque(maxlen=120)
        self.last_status: UpdateStatus | None = None
        # Test/bench hook: called with the state name at each transition (the fault test kills here).
        self.on_transition: Callable[[UpdateState], None] | None = None
        self.timings: dict[str, float] = {}

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
                self._trial.done.set()  # end the wait; an unfinished trial is not committed (see _switch_to)
            self._thread.join(timeout)
            self._thread = None

    # -- entry points from other threads --------------------------------------------------------
    def on_announcement(self, payload: bytes, topic: str = "") -> None:
        """MQTT callback: enqueue only (never block paho's network thread)."""
        self._queue.put(_Job("announce", payload=bytes(payload), topic=topic))

    def submit_command(self, request: CommandRequest, reply: Callable[[CommandResponse], None]) -> None:
        self._queue.put(_Job("command", request=request, reply=reply))

    def on_frame(self, report: FrameReport) -> None:
        """Per-frame hook from the inference thread: trial bookkeeping and the latency baseline."""
        trial = self._trial
        if trial is not None and trial.matches(report):
            trial.feed(report)
        elif report.error is None and trial is None:
            self._baseline.append(report.latency_s * 1000)

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
        if persist and self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # noqa: BLE001
                log.exception("on_change callback failed")
        return st

    def _save(self) -> None:
        with self._lock:
            snapshot = self.state.model_copy(deep=True)
        self.store.save_state(snapshot)

    # -- verify -------------------------------------------------------------------------------
    def authenticate(self, payload: bytes) -> tuple[Announcement, Manifest]:
        """Signature by a pinned key over the exact manifest bytes, then (only then) parse them."""
        try:
            ann = Announcement.model_validate_json(payload)
            data, sig = ann.manifest_bytes(), ann.signature()
        except (ValidationError, ValueError) as exc:
            raise UpdateRejected(f"malformed announcement: {str(exc).splitlines()[0]}") from None
        try:
            self.keyring.verify(data, ann.key_id, sig)  # the exact bytes, before any parsing
        except SignatureError as exc:
            raise UpdateRejected(str(exc)) from None
        try:
            return ann, parse_manifest(data)
        except BundleError as exc:
            raise UpdateRejected(str(exc)) from None

    def check(self, m: Manifest) -> None:
        """The policy checks on an authenticated manifest; raise UpdateRejected with the reason."""
        if not m.target.matches(self.node, self.groups):
            raise UpdateRejected(f"manifest targets {m.target}, not this node ({self.node}, groups {self.groups})")
        if m.is_expired():
            raise UpdateRejected(f"manifest expired at {m.expires.isoformat() if m.expires else '?'}")
        if m.version <= self.state.high_water:
            raise UpdateRejected(
                f"version {m.version} is not above the high-water mark {self.state.high_water} (replay or downgrade)"
            )
        if version_tuple(self.agent_version) < version_tuple(m.min_agent_version):
            raise UpdateRejected(f"needs agent {m.min_agent_version}, this node runs {self.agent_version}")
        too_big = [f for f in m.files if f.size > self.cfg.max_bundle_bytes]
        if too_big or m.total_size() > self.cfg.max_bundle_bytes:
            what = too_big[0].path if too_big else "bundle"
            size = too_big[0].size if too_big else m.total_size()
            raise UpdateRejected(f"{what} declares {size} bytes, over the limit of {self.cfg.max_bundle_bytes}")
        if self.state.pinned is not None:
            raise UpdateRejected(f"node is pinned to v{self.state.pinned}; send `pin` without a version to unpin")

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

    def _switch_to(self, name: str, version: int, reason: str, run_trial: bool) -> str | None:
        """Activate installed `version`, swap it in, trial it, commit it. Returns an error or None.

        The caller has persisted `pending` (phase activating) already.
        """
        is_committed = any(r.version == version for r in self.state.committed)
        self._status(UpdateState.ACTIVATING, name=name, version=version)
        new: EngineLike | None = None
        try:
            bundle = Bundle.load(self.store.version_dir(version), self.keyring)
            if self.cfg.preflight and not is_committed:
                preflight(bundle)
            try:
                new = self.load_engine(bundle)
            except Exception as exc:  # noqa: BLE001 - corrupt .tflite, wrong shapes, runtime errors
                raise ActivationFailed(f"cannot load model: {type(exc).__name__}: {exc}") from None
            golden_ms = run_golden(new, bundle)
            self.timings["activated"] = time.monotonic()
            log.info("v%d passed its self-test (%.1f ms)", version, golden_ms)
        except (ActivationFailed, BundleError, SignatureError) as exc:
            if new is not None:
                _close_quietly(new)
            return self._abort(name, version, str(exc), remove=not is_committed)
        # Persist "trial" before the swap: a crash from here on is rolled back at restart.
        with self._lock:
            self.state.pending = PendingUpdate(name=name, version=version, phase="trial", reason=reason)
        try:
            self._save()
        except StoreError as exc:
            _close_quietly(new)
            return self._abort(name, version, str(exc), remove=not is_committed, state=UpdateState.FAILED)
        baseline = statistics.median(self._baseline) if len(self._baseline) >= 5 else None
        monitor = TrialMonitor(new, version, self.cfg, baseline)
        self._trial = monitor
        old = self.swap_engine(new)
        self.timings["swapped"] = time.monotonic()
        prev_engine = self.engine
        self.engine = new
        self._status(UpdateState.TRIAL, name=name, version=version,
                     reason=f"watching {self.cfg.trial_frames} frames or {self.cfg.trial_seconds:.0f} s")
        if run_trial:
            monitor.done.wait(self.cfg.trial_seconds)
            verdict = monitor.verdict()
        else:
            verdict = None
        self._trial = None
        if self._stopping.is_set() and verdict is None and run_trial and monitor.frames < self.cfg.trial_frames:
            # Shutting down mid-trial: leave `pending` persisted; the next start rolls it back (crash rule).
            log.info("stopping during the trial of v%d: not committed", version)
            return "stopped during trial"
        if verdict is not None:
            back = old if old is not None else prev_engine
            if back is not None:
                self.swap_engine(back)
                self.engine = back
            self._baseline.clear()
            _close_quietly(new)
            return self._abort(name, version, f"trial failed: {verdict}", remove=not is_committed)
        return self._commit(name, version, bundle, old if old is not None else prev_engine, reason, monitor)

    def _commit(self, name: str, version: int, bundle: Bundle, old: EngineLike | None, reason: str,
                monitor: TrialMonitor) -> str | None:
        rec = ModelRecord(name=name, version=version)
        note = f"{monitor.frames} trial frames clean" if monitor.frames else "no frames during trial"
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
            with self._lock:
                self.state = before
                self.state.pending = None
            if old is not None:
                self.swap_engine(old)
                self.engine = old
            if monitor.engine is not old:
                _close_quietly(monitor.engine)  # type: ignore[arg-type]
            return self._abort(name, version, f"cannot commit: {exc}", remove=False, state=UpdateState.FAILED)
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

    def _abort(self, name: str, version: int, reason: str, remove: bool,
               state: UpdateState = UpdateState.ROLLED_BACK) -> str:
        with self._lock:
            self.state.pending = None
        if remove:
            self.store.remove_version(version)
        self._status(state, name=name, version=version, reason=reason, persist=True)
        return reason

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

    def _manual_switch(self, name: str, version: int, reason: str) -> str | None:
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

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _close_quietly(engine: EngineLike) -> None:
    try:
        engine.close()
    except Exception:  # noqa: BLE001
        log.exception("closing an engine failed")


__all__ = [
    "ActivationFailed",
    "EngineLike",
    "FrameReport",
    "TrialMonitor",
    "UpdateFailed",
    "UpdateRejected",
    "Updater",
    "run_golden",
    "version_tuple",
]
