"""Open a new bundle's model files in a throwaway child process before the agent loads them.

A malformed .tflite can crash the TFLite runtime natively (segfault), which no try/except catches.
`preflight` (the agent side) runs this module once per model file:

    python -m agent.updates.preflight MODEL.tflite 1|0

With `1` the model is also allocated and invoked once on zeros (the CPU model); with `0` it is only
parsed (the Edge TPU model: the TPU belongs to the running agent). Prints `ok` on success.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np

from agent.updates.errors import ActivationFailed

if TYPE_CHECKING:  # the child process needs none of the bundle machinery: keep its start-up light
    from agent.security.bundle import Bundle


def preflight(bundle: Bundle, timeout: float = 60.0) -> None:
    """Raise ActivationFailed if a model file of `bundle` cannot be opened (and the CPU model run once)
    by the TFLite runtime in a child process. The Edge TPU model is only parsed (the TPU is ours), and only
    when this node holds it (a v2 CPU node does not download it)."""
    m = bundle.manifest
    tpu = m.models.edgetpu
    checks = [(m.models.cpu, True)] + ([(tpu, False)] if tpu and bundle.has(tpu) else [])
    for rel, allocate in checks:
        cmd = [sys.executable, "-m", "agent.updates.preflight", str(bundle.path(rel)), "1" if allocate else "0"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ActivationFailed(f"cannot load model: {rel} hung the TFLite runtime for {timeout:.0f} s") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            if proc.returncode < 0:
                why = f"the TFLite runtime crashed (signal {-proc.returncode})"
            raise ActivationFailed(f"cannot load model: {rel}: {why}")


def check_model(path: str, allocate: bool) -> None:
    """In the child: open `path` with the TFLite runtime (and run it once on zeros when `allocate`).
    Any failure propagates: its traceback's last line is what the parent reports."""
    from agent.inference.tflite import Interpreter, require_runtime

    require_runtime()
    it = Interpreter(model_path=path)
    if allocate:
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
        for o in it.get_output_details():
            it.get_tensor(o["index"])


__all__ = ["check_model", "preflight"]

if __name__ == "__main__":
    check_model(sys.argv[1], sys.argv[2] == "1")
    print("ok")
