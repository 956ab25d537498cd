"""A TPU pool: one bundle's model on every device of `[backend.detectors.edgetpu] devices`, as one engine.

Each device is a member Engine (with its own CPU fallback and re-probe). The pipeline runs one inference
loop per device; each frame goes to a free healthy member — a loop sticks to its own member while it is
healthy, so a camera's frames spread over the devices. A member whose TPU is lost falls back to the CPU
(the frame in hand still completes there) and takes no more frames while another member is healthy: its
cameras move to the rest; only when every device is lost do the members run on the CPU. Degraded members
are polled for recovery (Engine.poll_recovery) and rejoin when their TPU is back.

To the updater a pool is one engine: loading one loads the model on every device, a swap replaces all of
them between two frames, and closing the previous engine after a rollback closes every device's copy.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.backends.base import Backend
from agent.inference.backends.edgetpu import EdgeTpuConfig, enumerate_tpus
from agent.inference.config import BackendConfig, DetectConfig, EngineConfig
from agent.inference.engine import Engine, EngineError, StageTimes
from agent.inference.frames import BundleIdentity
from agent.protocol.messages import Detection
from agent.security.bundle import Bundle

_POLL_S = 0.5  # how often idle degraded members look for their TPU


@dataclass(frozen=True)
class RoutedTimes(StageTimes):
    """Stage times plus the device the frame ran on."""

    device: str = ""


@dataclass(frozen=True)
class _MemberConfig:
    backend: BackendConfig
    detect: DetectConfig
    state_dir: Path


def pool_devices(cfg: EngineConfig) -> list[str]:
    """The devices of the preferred accelerator's pool; [] = no pool (one device, today's `device` key)."""
    accel = cfg.backend.preferred()
    if not isinstance(accel, EdgeTpuConfig):
        return []
    if accel.devices == "all":
        return [d.spec for d in enumerate_tpus(accel.sysfs_root, accel.dev_root)]
    return list(accel.devices)


def member_config(cfg: EngineConfig, device: str) -> _MemberConfig:
    """`cfg` with the Edge TPU section pinned to one device of the pool."""
    backend = cfg.backend.model_copy(deep=True)
    for name, d in backend.detectors.items():
        if isinstance(d, EdgeTpuConfig):
            backend.detectors[name] = d.model_copy(update={"device": device, "devices": []})
    return _MemberConfig(backend, cfg.detect, cfg.state_dir)


def load_engine(bundle: Bundle, cfg: EngineConfig) -> Engine | PoolEngine:
    """An Engine, or a PoolEngine when the config names more than one device."""
    devices = pool_devices(cfg)
    if len(devices) < 2:
        return Engine.load(bundle, member_config(cfg, devices[0]) if devices else cfg)
    return PoolEngine.load(bundle, cfg, devices)


class PoolEngine(BundleIdentity):
    def __init__(self, bundle: Bundle, members: list[Engine]) -> None:
        if not members:
            raise EngineError("an empty TPU pool")
        self.bundle = bundle
        self.members = members
        self.class_names = members[0].class_names
        self._busy = [False] * len(members)
        self._cond = threading.Condition()
        self._local = threading.local()  # the member this thread ran its last frame on
        self._next_poll = 0.0
        self._lane = 0

    @classmethod
    def load(cls, bundle: Bundle, cfg: EngineConfig, devices: list[str]) -> PoolEngine:
        members: list[Engine] = []
        try:
            for dev in devices:
                members.append(Engine.load(bundle, member_config(cfg, dev)))
        except EngineError:
            for m in members:
                m.close()
            raise
        return cls(bundle, members)

    # ------------------------------------------------------------------------------------------ identity

    @property
    def lanes(self) -> int:
        return len(self.members)

    @property
    def backend(self) -> Backend:
        """The backend of the member this thread last ran a frame on (the trial reads its outputs)."""
        return getattr(self._local, "member", self.members[0]).backend

    @property
    def backend_name(self) -> str:
        healthy = [m for m in self.members if m.state == "running"]
        return (healthy or self.members)[0].backend_name

    @property
    def device(self) -> str:
        return ",".join(m.device for m in self.members)

    @property
    def degraded_reason(self) -> str | None:
        reasons = [f"{i}: {m.degraded_reason}" for i, m in enumerate(self.members) if m.degraded_reason]
        return "; ".join(reasons) or None

    @property
    def state(self) -> str:
        return "degraded" if self.degraded_reason else "running"

    @property
    def input_size(self) -> tuple[int, int]:
        return self.members[0].input_size

    # ------------------------------------------------------------------------------------------ inference

    def _acquire(self) -> int:
        lane = getattr(self._local, "lane", None)
        if lane is None:
            with self._cond:
                lane, self._lane = self._lane % len(self.members), self._lane + 1
            self._local.lane = lane
        order = [(lane + k) % len(self.members) for k in range(len(self.members))]
        with self._cond:
            while True:
                healthy = [i for i in order if self.members[i].state == "running"]
                pick = next((i for i in (healthy or order) if not self._busy[i]), None)
                if pick is not None:
                    self._busy[pick] = True
                    return pick
                self._cond.wait(0.05)

    def _release(self, i: int) -> None:
        with self._cond:
            self._busy[i] = False
            self._cond.notify_all()

    def infer_timed(self, frame_bgr: np.ndarray) -> tuple[list[Detection], RoutedTimes]:
        i = self._acquire()
        member = self.members[i]
        try:
            dets, st = member.infer_timed(frame_bgr)
        finally:
            self._release(i)
        self._local.member = member
        self._poll_idle()
        return dets, RoutedTimes(st.preprocess_s, st.invoke_s, st.postprocess_s, member.device)

    def infer(self, frame_bgr: np.ndarray) -> list[Detection]:
        return self.infer_timed(frame_bgr)[0]

    def _poll_idle(self) -> None:
        """Let degraded members nobody sends frames to find their TPU again."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + _POLL_S
        for i, m in enumerate(self.members):
            if m.state != "degraded":
                continue
            with self._cond:
                if self._busy[i]:
                    continue
                self._busy[i] = True
            try:
                m.poll_recovery()
            finally:
                self._release(i)

    def invoke_raw(self, input: np.ndarray) -> list[np.ndarray]:  # noqa: A002 - mirrors Engine
        """The golden self-test runs on every device; the first device's outputs are returned, and a device
        whose outputs differ from it fails the test (EngineError)."""
        outs = [m.invoke_raw(input) for m in self.members]
        for i, o in enumerate(outs[1:], 1):
            if len(o) != len(outs[0]) or any(a.shape != b.shape for a, b in zip(o, outs[0], strict=True)):
                raise EngineError(f"device {self.members[i].device} gives outputs of another shape")
        return outs[0]

    def close(self) -> None:
        for m in self.members:
            m.close()

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "version": self.model_version, "backend": self.backend_name,
                "device": self.device, "state": self.state, "degraded_reason": self.degraded_reason,
                "members": [m.describe() for m in self.members]}
