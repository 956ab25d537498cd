"""A real TFLite model behind the pipeline's engine interface, for daemon-level tests of issue 7.

The systemd/outage tests need "a model is loaded and invoked every frame", not detection quality, and must
run where the builder's trained test bundle is not cached. Google's CPU MobileNet from the Coral test data
(tests/data/coral) runs on the real TFLite runtime; this adapter letterboxes nothing and decodes
nothing (it returns no detections). `hang` deliberately blocks inside infer_timed to simulate a hung invoke.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np


@dataclass
class Timings:
    preprocess_s: float
    invoke_s: float
    postprocess_s: float


def make_interpreter(path: Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


class TfliteClassifierEngine:
    backend_name = "cpu"
    device = "cpu"
    model_name = "mobilenet_v1_0.25_128_quant"
    model_version = 1

    def __init__(self, model: Path) -> None:
        self.it = make_interpreter(model)
        inp = self.it.get_input_details()[0]
        self.inp_index, (_, self.h, self.w, _) = inp["index"], inp["shape"]
        self.out_index = self.it.get_output_details()[0]["index"]
        self.hang = threading.Event()  # set → the next invoke blocks until release is set
        self.release = threading.Event()
        self.stuck = threading.Event()  # set once an invoke is blocked by `hang`
        self.invokes = 0
        #: extra seconds added inside invoke, cycled frame by frame (induced latencies for telemetry tests)
        self.extra_invoke_s: list[float] = []
        #: every invoke time this engine reported, in order
        self.invoke_times: list[float] = []

    def infer_timed(self, frame_bgr: np.ndarray) -> tuple[list[Any], Timings]:
        t0 = time.perf_counter()
        x = cv2.resize(frame_bgr, (self.w, self.h))[None, ..., ::-1].astype(np.uint8)
        t1 = time.perf_counter()
        self.it.set_tensor(self.inp_index, x)
        if self.hang.is_set():
            self.stuck.set()
            self.release.wait()  # a stuck accelerator: invoke never returns
        self.it.invoke()
        if self.extra_invoke_s:
            time.sleep(self.extra_invoke_s[self.invokes % len(self.extra_invoke_s)])
        self.invokes += 1
        t2 = time.perf_counter()
        self.invoke_times.append(t2 - t1)
        _ = self.it.get_tensor(self.out_index)
        t3 = time.perf_counter()
        return [], Timings(t1 - t0, t2 - t1, t3 - t2)


def run_agent(config: str, model: str) -> int:
    """`python helpers_telemetry.py CONFIG MODEL`: the real daemon (AgentService.run, signal handlers and all)
    with the TFLite adapter as its model, installed once the pipeline runs (what the updater would do)."""
    import logging

    from agent.config import load_config
    from agent.service.daemon import AgentService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    svc = AgentService(load_config(config))

    def install() -> None:
        while not svc.pipeline.running:
            time.sleep(0.05)
        svc.install_engine(TfliteClassifierEngine(Path(model)))

    threading.Thread(target=install, daemon=True).start()
    return svc.run()


if __name__ == "__main__":
    import sys

    sys.exit(run_agent(sys.argv[1], sys.argv[2]))
