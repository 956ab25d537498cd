"""The shadow candidate in a child process: its own interpreter, its own GIL, the lowest CPU priority.

Why a process and not a thread of the agent:
- priority without inversion: the candidate runs at nice 19, so the kernel gives the live threads the
  cores first. A nice-19 *thread* in the agent would share the GIL with the live inference thread and,
  descheduled while holding it, stall the live frame it was meant to yield to;
- isolation: the candidate is an unproven model file; a native crash or hang of the TFLite runtime on
  it ends the child (reported as candidate errors), never the agent (the preflight's rule);
- stopping it is ending a process: the interpreter, its arenas and its threads are gone with it.

The child (spawned: the agent has threads, fork would copy their locks) loads the bundle's CPU model with
the candidate config and answers one frame at a time over a pipe: frame in (a pickled uint8 array, ~1 ms
for 640×480), detections and stage times out.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.engine import Engine, EngineError, StageTimes
from agent.inference.frames import BundleIdentity
from agent.protocol.messages import Detection
from agent.security.bundle import Bundle

NICE = 19
START_TIMEOUT_S = 60.0  # spawn + imports + model load, on a slow Pi
FRAME_TIMEOUT_S = 30.0  # a candidate frame taking longer is a hung candidate: the child is killed


def _serve(conn: Connection, bundle_dir: str, cfg: Any, nice: int) -> None:
    """The child: load, then one frame in → one answer out, until None or the pipe closes."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    try:
        # The parent verified the signature and every sha256 before handing the directory over.
        engine = Engine.load(Bundle.load(Path(bundle_dir), check=False), cfg)
    except Exception as exc:  # noqa: BLE001 - anything that stops the load is the parent's answer
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {"backend": engine.backend_name, "device": engine.device}))
    while True:
        try:
            frame = conn.recv()
        except (EOFError, OSError):
            break
        if frame is None:
            break
        try:
            dets, st = engine.infer_timed(frame)
            conn.send(("ok", [d.model_dump() for d in dets], (st.preprocess_s, st.invoke_s, st.postprocess_s)))
        except Exception as exc:  # noqa: BLE001 - one bad frame is one error, reported
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    engine.close()


class ChildEngine(BundleIdentity):
    """An EngineLike whose model runs in a child process (infer_timed only; one caller at a time)."""

    def __init__(self, bundle: Bundle, cfg: Any, nice: int = NICE, start_timeout: float = START_TIMEOUT_S,
                 frame_timeout: float = FRAME_TIMEOUT_S) -> None:
        self.bundle = bundle
        self.frame_timeout = frame_timeout
        self._lock = threading.Lock()
        self._closed = False
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, str(bundle.root), cfg, nice), name="shadow-candidate",
                                   daemon=True)
        self.process.start()
        child.close()
        try:
            kind, info = self._answer(start_timeout, "start")
        except EngineError:
            self.close()
            raise
        if kind != "ready":
            self.close()
            raise EngineError(f"candidate model not loaded: {info}")
        self.backend_name: str = info["backend"]
        self.device: str = info["device"]

    def _answer(self, timeout: float, what: str) -> tuple[Any, ...]:
        if not self._conn.poll(timeout):
            self._kill()
            raise EngineError(f"candidate process did not {what} within {timeout:.0f} s (killed)")
        try:
            msg: tuple[Any, ...] = self._conn.recv()
            return msg
        except (EOFError, OSError):
            self.process.join(1.0)
            raise EngineError(f"candidate process died (exit code {self.process.exitcode})") from None

    def infer_timed(self, frame_bgr: np.ndarray) -> tuple[list[Detection], StageTimes]:
        with self._lock:
            if self._closed or not self.process.is_alive():
                raise EngineError("engine is closed" if self._closed else
                                  f"candidate process died (exit code {self.process.exitcode})")
            try:
                self._conn.send(frame_bgr)
            except (OSError, ValueError) as exc:
                raise EngineError(f"candidate process unreachable: {exc}") from None
            msg = self._answer(self.frame_timeout, "answer a frame")
        if msg[0] != "ok":
            raise EngineError(str(msg[1]))
        return [Detection(**d) for d in msg[1]], StageTimes(*msg[2])

    def invoke_raw(self, input: np.ndarray) -> list[np.ndarray]:  # noqa: A002 - mirrors Engine
        raise EngineError("a shadow candidate runs frames only")

    def _kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)

    @property
    def closed(self) -> bool:
        return self._closed and not self.process.is_alive()

    def close(self) -> None:
        """Ask the child to finish, kill it if it does not within 5 s; idempotent."""
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        self.process.join(5.0)
        self._kill()
        self._conn.close()


__all__ = ["ChildEngine"]
