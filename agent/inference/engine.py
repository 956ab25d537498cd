"""The Engine: one bundle's model on the best backend available, with preprocessing and decoding.

Backend choice (backends come from the registry by config `type`): the bundle's model for the preferred
accelerator (the Edge TPU) when the config prefers one; if that cannot run (no TPU, delegate error, the
TPU vanished mid-run — USB Corals re-enumerate), the bundle's CPU model, with `degraded_reason` saying
why. While degraded, a background probe retries the accelerator every `reprobe_interval_s`, and at once
when its backend's change_token moves (the Edge TPU's: the libedgetpu file was replaced); the engine
moves back between two frames when it works. No exception from a lost accelerator escapes infer(): the
frame is re-run on the CPU. Frigate crash-loops here; we don't.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from agent.inference import decode
from agent.inference.backends import registry
from agent.inference.backends.base import Backend, BackendError, BackendSettings
from agent.inference.config import EngineConfig
from agent.inference.decode import DecodeError, Decoder, Detections
from agent.inference.decode.nms import class_agnostic_nms
from agent.inference.frames import BundleIdentity
from agent.inference.preprocess import LetterboxInfo, letterbox, letterbox_params, normalize_boxes, to_input
from agent.protocol.messages import Detection
from agent.security.bundle import Bundle

log = logging.getLogger(__name__)


class EngineError(Exception):
    """The bundle cannot run on any backend (e.g. its CPU model is broken)."""


# Timer spacing when the config prefers no accelerator (there is nothing to retry then).
_DEFAULT_REPROBE_S = 30.0
# While degraded, how often a background thread looks whether the preferred backend's change_token moved.
_WATCH_S = 2.0


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent in each stage of one infer() call (wall clock, perf_counter)."""

    preprocess_s: float
    invoke_s: float
    postprocess_s: float


def make_decoder(bundle: Bundle, backend: Backend) -> Decoder:
    """The bundle's decoder bound to this backend's actual output tensors (their quantization)."""
    return decode.make_decoder(bundle.manifest.layout, backend.outputs, (backend.input.shape[1], backend.input.shape[2]))


def open_backend(bundle: Bundle, cfg: EngineConfig, type_: str) -> Backend:
    """The bundle's model for backend `type_`, opened with its config section."""
    cls = registry.backend_class(type_)
    rel = getattr(bundle.manifest.models, cls.model, None)
    if rel is None:
        raise BackendError(f"the bundle has no {cls.model} model")
    if not bundle.has(rel):
        raise BackendError(f"{rel} was not downloaded by this node (its manifest lists only the files of the "
                           "backend it was configured for); the next update fetches it")
    return cls.open(bundle.path(rel), backend_settings(cfg, type_))


def backend_settings(cfg: EngineConfig, type_: str) -> BackendSettings:
    """Backend `type_`'s config section; a `state_dir` field left unset (the Edge TPU's probe verdict
    cache) becomes the agent's state_dir."""
    s = cfg.backend.settings(type_)
    if getattr(s, "state_dir", False) is None:
        return s.model_copy(update={"state_dir": cfg.state_dir})
    return s


class Engine(BundleIdentity):
    """Thread-safe: infer() and invoke_raw() serialize on one lock (one interpreter)."""

    def __init__(self, bundle: Bundle, cfg: EngineConfig, backend: Backend, degraded_reason: str | None = None):
        self.bundle = bundle
        self.cfg = cfg
        self._backend = backend
        self._decoder = make_decoder(bundle, backend)
        self.degraded_reason = degraded_reason
        self._lock = threading.RLock()
        self._pending: Backend | None = None
        self._probe: threading.Thread | None = None
        accel = cfg.backend.preferred()
        self._reprobe_s = accel.reprobe_interval_s if accel else _DEFAULT_REPROBE_S
        self._next_probe = time.monotonic() + self._reprobe_s
        self._next_watch = 0.0
        self._probed_token = self._change_token()
        self._closed = False
        self.fallbacks = 0
        self.recoveries = 0
        self.last_probe_error: str | None = None
        self._fallback_failed: str | None = None
        self._next_fallback = 0.0
        m = bundle.manifest
        self.class_names = list(m.class_names)
        wanted = cfg.detect.classes
        unknown = sorted(set(wanted or []) - set(self.class_names))
        if unknown:
            log.warning("class filter names %s not in the model's classes %s", unknown, self.class_names)
        self._class_ids: list[int] | None = (
            [i for i, n in enumerate(self.class_names) if n in wanted] if wanted is not None else None
        )
        self._check_input(backend)

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, bundle: Bundle, cfg: EngineConfig) -> Engine:
        """Open the bundle on the preferred accelerator if possible, else on the CPU (degraded if the
        accelerator was wanted). Raises EngineError only when the CPU model cannot run either."""
        m = bundle.manifest
        preferred = preferred_type(bundle, cfg)
        reason: str | None = None
        if preferred is not None:
            label = registry.backend_class(preferred).label
            try:
                return cls(bundle, cfg, open_backend(bundle, cfg, preferred))
            except BackendError as exc:
                reason = str(exc)
            except (DecodeError, EngineError) as exc:
                reason = f"{label} model unusable: {exc}"
            log.warning("%s v%d: %s unavailable (%s); running the CPU model", m.name, m.version, label, reason)
        try:
            backend = open_backend(bundle, cfg, registry.FALLBACK)
            return cls(bundle, cfg, backend, degraded_reason=reason)
        except (BackendError, DecodeError) as exc:
            raise EngineError(f"{m.name} v{m.version}: {exc}") from exc

    # ------------------------------------------------------------------------------------------ identity

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def device(self) -> str:
        return self._backend.device

    @property
    def state(self) -> str:
        """"running" or "degraded" (NodeState.status values)."""
        return "degraded" if self.degraded_reason else "running"

    @property
    def input_size(self) -> tuple[int, int]:
        return self._backend.input.shape[1], self._backend.input.shape[2]

    # ------------------------------------------------------------------------------------------ inference

    def infer(self, frame_bgr: np.ndarray) -> list[Detection]:
        return self.infer_timed(frame_bgr)[0]

    def infer_timed(self, frame_bgr: np.ndarray) -> tuple[list[Detection], StageTimes]:
        """Detections (normalized xyxy in the frame) and per-stage times. Raises EngineError/DecodeError
        for a frame the model cannot handle; a TPU failure is absorbed by falling back to the CPU."""
        if frame_bgr is None or frame_bgr.ndim < 2 or frame_bgr.size == 0:
            raise EngineError("empty frame")
        with self._lock:
            if self._closed:
                raise EngineError("engine is closed")
            self._maybe_recover()
            if self._fallback_failed and time.monotonic() < self._next_fallback:
                raise EngineError(self._fallback_failed)  # don't reload a broken CPU model every frame
            try:
                return self._infer(frame_bgr)
            except BackendError as exc:
                if self._backend.name == registry.FALLBACK:
                    raise EngineError(str(exc)) from exc
                try:
                    self._fall_back(f"{self._backend.label} lost at run time: {exc}")
                except EngineError as fexc:
                    self._fallback_failed = str(fexc)
                    self._next_fallback = time.monotonic() + self._reprobe_s
                    raise
                self._fallback_failed = None
                return self._infer(frame_bgr)

    def _infer(self, frame: np.ndarray) -> tuple[list[Detection], StageTimes]:
        b = self._backend
        p = self.bundle.manifest.preprocess
        t0 = time.perf_counter()
        info = self._preprocess(frame, b, p.letterbox, p.pad_value, p.color == "RGB", p.scale)
        t1 = time.perf_counter()
        b.invoke()
        t2 = time.perf_counter()
        det = self._decoder.decode(
            b.get_outputs(),
            conf=self.cfg.detect.score_threshold,
            iou=self.cfg.detect.iou_threshold,
            max_det=self.cfg.detect.max_detections,
            letterbox=info,
            classes=self._class_ids,
        )
        if self.cfg.detect.class_agnostic_nms:  # one object, one report: cross-class duplicates dropped
            keep = class_agnostic_nms(det.boxes, det.scores, self.cfg.detect.iou_threshold)
            det = Detections(det.boxes[keep], det.scores[keep], det.classes[keep])
        if not isinstance(info, LetterboxInfo):  # stretched: canvas pixels → frame pixels
            sy, sx = frame.shape[0] / self.input_size[0], frame.shape[1] / self.input_size[1]
            det.boxes[:, 0::2] *= sx
            det.boxes[:, 1::2] *= sy
        out = self._to_messages(det, frame.shape[1], frame.shape[0])
        t3 = time.perf_counter()
        return out, StageTimes(t1 - t0, t2 - t1, t3 - t2)

    @staticmethod
    def _preprocess(
        frame: np.ndarray, b: Backend, use_letterbox: bool, pad: int, to_rgb: bool, scale: str
    ) -> LetterboxInfo | None:
        """Write the frame into the input tensor. uint8 models fed raw pixels get the letterbox written
        straight into the tensor's memory (no intermediate copy); the rest go through to_input()."""
        t = b.input
        size = t.shape[1]
        direct = t.dtype == np.uint8 and (scale == "raw" or (abs(t.scale * 255.0 - 1.0) < 1e-6 and t.zero_point == 0))
        if use_letterbox and direct:
            b.fill_input(lambda buf: letterbox(frame, size, pad_value=pad, bgr_input=to_rgb, out=buf)[1])
            return letterbox_params(frame.shape[1], frame.shape[0], size)
        info: LetterboxInfo | None
        if use_letterbox:
            canvas, info = letterbox(frame, size, pad_value=pad, bgr_input=to_rgb)
        else:
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if to_rgb else frame
            canvas, info = cv2.resize(rgb, (t.shape[2], t.shape[1]), interpolation=cv2.INTER_AREA), None
        if direct or (scale == "raw" and t.dtype.kind == "f"):
            data = canvas.astype(t.dtype, copy=False)
        else:
            data = to_input(canvas, t.dtype, t.scale or None, t.zero_point)[0]

        def copy(buf: np.ndarray) -> None:
            buf[...] = data

        b.fill_input(copy)
        return info

    def _to_messages(self, det: Detections, w: int, h: int) -> list[Detection]:
        out: list[Detection] = []
        if len(det) == 0:
            return out
        if not np.all(np.isfinite(det.boxes)) or not np.all(np.isfinite(det.scores)):
            raise DecodeError("non-finite boxes or scores (NaN/inf)")
        boxes = normalize_boxes(det.boxes, w, h)
        for box, score, cls in zip(boxes.tolist(), det.scores.tolist(), det.classes.tolist(), strict=True):
            cid = int(cls)
            name = self.class_names[cid] if 0 <= cid < len(self.class_names) else str(cid)
            out.append(Detection(box=(box[0], box[1], box[2], box[3]), class_id=cid, class_name=name,
                                 score=float(score)))
        return out

    def invoke_raw(self, input: np.ndarray) -> list[np.ndarray]:
        """Run a prepared input tensor (e.g. the bundle's golden input) and return the raw outputs."""
        with self._lock:
            if self._closed:
                raise EngineError("engine is closed")
            try:
                return self._backend.run(input)
            except BackendError as exc:
                raise EngineError(str(exc)) from exc

    # ------------------------------------------------------------------------------------------ fallback

    def _fall_back(self, reason: str) -> None:
        """Called with the lock held after the accelerator failed: reopen on the CPU (raises EngineError
        if even that fails)."""
        log.warning("%s; falling back to the CPU model", reason)
        old = self._backend
        try:
            cpu = open_backend(self.bundle, self.cfg, registry.FALLBACK)
            decoder = make_decoder(self.bundle, cpu)
        except (BackendError, DecodeError) as exc:
            raise EngineError(f"{old.label} lost and the CPU model failed too: {exc}") from exc
        self._backend, self._decoder = cpu, decoder
        self.degraded_reason = reason
        self.fallbacks += 1
        self._next_probe = time.monotonic() + self._reprobe_s
        old.close()

    def _maybe_recover(self) -> None:
        """While degraded: swap in a TPU backend the probe thread opened; start a probe when due."""
        if self._pending is not None:
            new, self._pending = self._pending, None
            try:
                decoder = make_decoder(self.bundle, new)
                self._check_input(new)
            except (DecodeError, EngineError) as exc:
                self.degraded_reason = f"{new.label} model unusable: {exc}"
                new.close()
                return
            old = self._backend
            self._backend, self._decoder = new, decoder
            self.degraded_reason = None
            self.recoveries += 1
            log.info("%s is back (%s); left the CPU model", new.label, new.device)
            old.close()
            return
        now = time.monotonic()
        if (
            self.degraded_reason
            and preferred_type(self.bundle, self.cfg) is not None
            and (now >= self._next_probe or now >= self._next_watch)
            and (self._probe is None or not self._probe.is_alive())
        ):
            periodic = now >= self._next_probe
            self._next_watch = now + _WATCH_S
            if periodic:
                self._next_probe = now + self._reprobe_s
            self._probe = threading.Thread(target=self._probe_preferred, args=(periodic,), name="tpu-probe",
                                           daemon=True)
            self._probe.start()

    def poll_recovery(self) -> None:
        """_maybe_recover() for an engine that takes no frame while degraded (an idle member of a TPU pool)."""
        with self._lock:
            if not self._closed:
                self._maybe_recover()

    def _change_token(self) -> object:
        """The preferred backend's change_token (None without one); may stat files or run ldconfig."""
        preferred = preferred_type(self.bundle, self.cfg)
        token = getattr(registry.backend_class(preferred), "change_token", None) if preferred else None
        return token(self.cfg.backend.settings(preferred)) if token is not None and preferred else None

    def _probe_preferred(self, periodic: bool) -> None:
        # Opening the TPU (firmware load, model upload) takes up to seconds: never on the frame path.
        # Not `periodic`: only when the token moved (e.g. libedgetpu replaced), at once, not in 30 s.
        preferred = preferred_type(self.bundle, self.cfg)
        assert preferred is not None
        token = self._change_token()
        if not periodic and token == self._probed_token:
            return
        self._probed_token = token
        try:
            backend = open_backend(self.bundle, self.cfg, preferred)
        except BackendError as exc:
            log.debug("%s probe: %s", preferred, exc)
            self.last_probe_error = str(exc)
            with self._lock:
                if self.degraded_reason and not self._closed:
                    self.degraded_reason = str(exc)  # the current cause, e.g. a replaced library's verdict
            return
        self.last_probe_error = None
        with self._lock:
            if self._closed:
                backend.close()
            else:
                self._pending = backend

    def _check_input(self, b: Backend) -> None:
        t = b.input
        if len(t.shape) != 4 or t.shape[0] != 1 or t.shape[3] != 3:
            raise EngineError(f"model input must be 1xHxWx3, got {list(t.shape)}")
        if self.bundle.manifest.preprocess.letterbox and t.shape[1] != t.shape[2]:
            raise EngineError(f"letterbox needs a square input, got {t.shape[1]}x{t.shape[2]}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._backend.close()
            if self._pending is not None:
                self._pending.close()
                self._pending = None

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "version": self.model_version,
            "backend": self.backend_name,
            "device": self.device,
            "state": self.state,
            "degraded_reason": self.degraded_reason,
            "last_probe_error": self.last_probe_error,
            "input": list(self._backend.input.shape),
        }


def preferred_type(bundle: Bundle, cfg: EngineConfig) -> str | None:
    """The backend type to run when it works: the config's enabled accelerator, if the bundle has a model
    for it; None = the CPU only."""
    accel = cfg.backend.preferred()
    if accel is None or getattr(bundle.manifest.models, registry.backend_class(accel.type).model, None) is None:
        return None
    return accel.type
