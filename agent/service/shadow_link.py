"""The node's side of shadow runs: the retained request on `{prefix}/node/{node}/shadow` in, a candidate
verified and fetched by the update path's own code, a ShadowRunner on the pipeline's shadow hook, and the
retained ShadowReport on `{prefix}/node/{node}/shadow/report` (see docs/SHADOW.md).

Why a retained topic rather than a command: the request outlives the builder's connection and the node's
restarts (a run resumes after a reboot, the retained request is read again), and clearing it (an empty
retained message) is the one way to stop it, seen by the node whenever it is next online. A command would
need the builder online and a node that remembers.

The candidate: `authenticate` (signature by a trusted key over the exact manifest bytes), `check_manifest`
(target, size, agent version, expiry required; not the high-water mark: a shadow may run any version, the
live one included, since it never goes live), `check_expiry` once the clock can judge it, `download_bundle`
into `<state_dir>/shadow/candidate` (apart from the model store), `Bundle.load` with the keyring (every
sha256 again). A refusal is reported and the live model runs on untouched.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent import __version__ as AGENT_VERSION
from agent.inference.frames import EngineLike
from agent.inference.pipeline import ShadowHook
from agent.inference.shadow import Compared, ShadowRunner, candidate_config
from agent.inference.shadow_child import ChildEngine
from agent.protocol.messages import ModelRef
from agent.protocol.shadow import ShadowReport, ShadowRequest, ShadowState
from agent.security.bundle import Bundle, BundleError
from agent.security.signing import Keyring, SignatureError, SignatureFile
from agent.system.clock import clock_status
from agent.updates.download import DownloadError, DownloadLimits, download_bundle
from agent.updates.errors import UpdateFailed, UpdateRejected
from agent.updates.intake import ClockGate, ClockSource
from agent.updates.store import StoreState, UpdatesConfig
from agent.updates.verify import authenticate, check_expiry, check_manifest

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]  # (topic, payload): published retained, QoS 1


class _ClockNotSynced(UpdateFailed):
    """The candidate's expiry cannot be judged by this clock yet: held, decided once it is synchronized."""


class ShadowLink:
    def __init__(self, *, node: str, groups: list[str], report_topic: str, keyring: Keyring, config: UpdatesConfig,
                 state_dir: Path, load_engine: Callable[[Bundle], EngineLike],
                 set_hook: Callable[[ShadowHook | None], None], live_model: Callable[[], ModelRef | None],
                 publish: Publish, agent_version: str = AGENT_VERSION, clock: ClockSource = clock_status) -> None:
        self.node, self.groups, self.report_topic = node, list(groups), report_topic
        self.keyring, self.cfg = keyring, config
        self.dir = state_dir / "shadow" / "candidate"
        self.load_engine, self.set_hook, self.live_model = load_engine, set_hook, live_model
        self.publish, self.agent_version = publish, agent_version
        self.on_compared: list[Compared] = []  # every run's comparisons (the daemon adds hard-example capture)
        self._clock = ClockGate(clock, config.clock_sync, ttl_s=min(5.0, config.clock_recheck_s))
        self._cond = threading.Condition()
        self._inbox: bytes | None = None  # the newest request not handled yet (a retained topic: only the last counts)
        self._stopping = False
        self._poked = False  # the runner finished: report without waiting for the next period
        self._held: bytes | None = None  # a request whose expiry the clock cannot judge yet (as the updater holds)
        self._thread: threading.Thread | None = None
        self.request: ShadowRequest | None = None  # the request being served (or last finished)
        self.runner: ShadowRunner | None = None
        self.candidate: ModelRef | None = None
        self.started: datetime | None = None
        self.last_report: ShadowReport | None = None

    # ------------------------------------------------------------------------------------------ threads

    def start(self) -> ShadowLink:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="shadow-link", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """At agent shutdown: unload the candidate (the retained request resumes the run at the next start)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._unload()

    def on_message(self, msg: Any) -> None:
        """MQTT callback (paho's thread): keep the payload, wake the worker; never blocks."""
        with self._cond:
            self._inbox = bytes(msg.payload)
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                every = self.request.report_every_s if self.runner is not None and self.request else None
                if self._held is not None:  # a request waiting for the clock: look again every clock_recheck_s
                    every = min(every or self.cfg.clock_recheck_s, self.cfg.clock_recheck_s)
                self._cond.wait_for(lambda: self._inbox is not None or self._stopping or self._poked, every)
                if self._stopping:
                    return
                payload, self._inbox, self._poked = self._inbox, None, False
                if payload is None and self._held is not None and self._clock.why_not() is None:
                    payload, self._held, self.request = self._held, None, None  # decide it now
            try:
                if payload is not None:
                    self._handle(payload)
                self._tick()
            except Exception:  # noqa: BLE001 - the link must survive anything; inference goes on
                log.exception("shadow link: unexpected error")

    def _tick(self) -> None:
        """Every report_every_s while a run is on: the report so far, or the final one when it is done."""
        r = self.runner
        if r is None:
            return
        proc = getattr(r.candidate, "process", None)  # ChildEngine: the candidate's own process
        if r.snapshot().done:
            rep = self.report(ShadowState.DONE)
            self._unload()  # before the report goes out: whoever reads `done` finds the candidate gone
            self._send(rep)
        elif proc is not None and not proc.is_alive():  # crashed or killed: the live model never noticed
            rep = self.report(ShadowState.FAILED, f"candidate process ended (exit code {proc.exitcode})")
            self._unload()
            self._send(rep)
        else:
            self._report(ShadowState.RUNNING)

    def _wake(self) -> None:
        with self._cond:
            self._poked = True
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------------ requests

    def _handle(self, payload: bytes) -> None:
        if not payload.strip():  # the retained request was cleared: stop
            if self.request is not None:
                self._unload()
                self._report(ShadowState.STOPPED, "request cleared")
                self.request = None
            return
        try:
            req = ShadowRequest.model_validate_json(payload)
        except ValidationError as exc:
            self._unload()
            self.request, self.candidate = None, None
            self._report(ShadowState.REJECTED, f"malformed shadow request: {str(exc).splitlines()[0]}")
            return
        if self.request is not None and req.model_dump() == self.request.model_dump():
            return  # the same retained request again (a reconnect): keep going, or stay done
        self._unload()
        self.request, self.candidate, self.started, self._held = req, None, None, None
        self._report(ShadowState.VERIFYING)
        try:
            bundle = self.fetch(req)
            m = bundle.manifest
            self.candidate = ModelRef(name=m.name, version=m.version)
            engine = self.load_engine(bundle)
        except UpdateRejected as exc:
            self._report(ShadowState.REJECTED, str(exc))
            return
        except _ClockNotSynced as exc:
            self._held = payload
            self._report(ShadowState.VERIFYING, f"held: {exc}")
            return
        except UpdateFailed as exc:
            self._report(ShadowState.FAILED, str(exc))
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. EngineError: a candidate that cannot run on this node
            self._report(ShadowState.FAILED, f"candidate not loaded: {exc}")
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        self.runner = ShadowRunner(engine, req.sampling, req.iou_threshold, req.max_frames, req.duration_s,
                                   on_done=self._wake, on_compared=self.on_compared).start()
        self.started = datetime.now(UTC)
        self.set_hook(self.runner.offer)
        log.info("shadow run %s: %s v%d beside the live model", req.request_id, m.name, m.version)
        self._report(ShadowState.RUNNING)

    def fetch(self, req: ShadowRequest) -> Bundle:
        """The candidate, verified like an update and downloaded apart: UpdateRejected / UpdateFailed."""
        ann, m = authenticate(req.candidate.model_dump_json().encode(), self.keyring)
        check_manifest(m, node=self.node, groups=self.groups, state=StoreState(), max_bundle_bytes=self.cfg.max_bundle_bytes,
                       agent_version=self.agent_version, require_expires=self.cfg.require_expires)
        if m.expires is not None:
            why = self._clock.why_not()
            if why is not None:
                raise _ClockNotSynced(f"waiting for clock sync to check the candidate's expiry; {why}")
            check_expiry(m)
        shutil.rmtree(self.dir, ignore_errors=True)
        sig = SignatureFile(key_id=ann.key_id, signature_b64=ann.signature_b64).model_dump_json(indent=2).encode()
        limits = DownloadLimits(self.cfg.connect_timeout_s, self.cfg.read_timeout_s, self.cfg.total_timeout_s,
                                self.cfg.download_retries)
        try:
            # the candidate runs on the CPU: a v2 manifest's CPU list is all it needs (v1: every file)
            download_bundle(ann.base_url, m, ann.manifest_bytes(), sig, self.dir, limits, files=m.needed_files("cpu"))
        except DownloadError as exc:
            raise UpdateFailed(f"download failed: {exc}") from None
        try:
            return Bundle.load(self.dir, self.keyring)
        except (BundleError, SignatureError) as exc:
            raise UpdateRejected(f"downloaded candidate invalid: {exc}") from None

    def _unload(self) -> None:
        """Detach the runner from the pipeline, free the candidate's interpreter, delete its files."""
        r, self.runner = self.runner, None
        if r is None:
            return
        self.set_hook(None)
        r.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ reports

    def report(self, state: ShadowState, reason: str | None = None) -> ShadowReport:
        req, r = self.request, self.runner
        rep = ShadowReport(node=self.node, request_id=req.request_id if req else None, state=state, reason=reason,
                           live=self.live_model(), candidate=self.candidate, sampling=req.sampling if req else None,
                           started=self.started)
        if r is None and self.last_report is not None and state == ShadowState.STOPPED:
            last = self.last_report  # keep the figures of the run that was stopped
            return rep.model_copy(update={k: getattr(last, k) for k in _FIGURES})
        if r is not None:
            s = r.snapshot()
            rep = rep.model_copy(update={
                "window_s": round(s.window_s, 3), "agreement": s.agreement, "candidate_latency": s.candidate_latency,
                "live_latency": s.live_latency, "shadow_frames": s.counters.shadow_frames,
                "shadow_rate_hz": round(s.rate_hz, 3) if s.rate_hz is not None else None,
                "errors": s.counters.errors, "skipped_budget": s.counters.skipped_budget,
                "skipped_busy": s.counters.skipped_busy,
                "live_slowdown": round(s.live_slowdown, 4) if s.live_slowdown is not None else None})
        return rep

    def _report(self, state: ShadowState, reason: str | None = None) -> None:
        self._send(self.report(state, reason))

    def _send(self, rep: ShadowReport) -> None:
        state, reason = rep.state, rep.reason
        if state in (ShadowState.REJECTED, ShadowState.FAILED):
            log.warning("shadow run %s %s: %s", rep.request_id, state.value, reason)
        self.last_report = rep
        self.publish(self.report_topic, rep.model_dump_json().encode())


_FIGURES = ("window_s", "agreement", "candidate_latency", "live_latency", "shadow_frames", "shadow_rate_hz",
            "errors", "skipped_budget", "skipped_busy", "live_slowdown")


def attach(service: Any) -> ShadowLink | None:
    """Wire a ShadowLink into a started AgentService (agent.service.daemon): None when updates are off or
    no trusted keys are there to verify a candidate with."""
    cfg = service.cfg
    if not cfg.updates.enabled or service.keyring is None:
        return None

    def live_model() -> ModelRef | None:
        e = service.pipeline.engine
        return ModelRef(name=e.model_name, version=e.model_version) if e is not None else None

    engine_cfg = candidate_config(cfg.model_copy(update={"detect": service.engine_detect}))
    link = ShadowLink(
        node=service.node, groups=list(cfg.groups), report_topic=service.topics.shadow_report(service.node),
        keyring=service.keyring, config=cfg.updates, state_dir=cfg.state_dir,
        load_engine=lambda bundle: ChildEngine(bundle, engine_cfg), set_hook=service.pipeline.set_shadow_hook,
        live_model=live_model, publish=lambda topic, payload: service.mqtt.publish(topic, payload, qos=1, retain=True),
    ).start()
    service.mqtt.subscribe(service.topics.shadow(service.node), link.on_message, qos=1)
    service.on_stop.append(link.stop)
    return link


__all__ = ["ShadowLink", "attach"]
