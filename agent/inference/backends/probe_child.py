"""The Edge TPU probe's child side: load one delegate library, run one model once, report.

Runs only in the throwaway process `agent.inference.backends.probe` starts
(`python -m agent.inference.backends.probe ...`): a libedgetpu built against another TFLite version
may segfault or hang in here, and only this process dies. It reports on stdout, one JSON object per
line after MARK, flushed before each risky step, so the parent knows how far it got when the process
dies: {"stage": ...} lines while working, then one line with "status" (ok / failed / wrong_output).
"""

from __future__ import annotations

import argparse
import ctypes
import json
from importlib import metadata
from typing import Any

import numpy as np

from agent.inference import tflite

MARK = "EDGE_TPU_PROBE "


def emit(**fields: Any) -> None:
    print(MARK + json.dumps(fields), flush=True)


def runtime_version(runtime: str) -> str:
    """The installed distribution's version of a TFLite runtime ("ai-edge-litert", "tflite-runtime")."""
    try:
        return metadata.version(runtime)
    except metadata.PackageNotFoundError:
        return "unknown"


def library_version(lib_path: str) -> str | None:
    """libedgetpu's `edgetpu_version()` ("BuildLabel(...), RuntimeVersion(14)"), None if not exported.

    Loading the library runs its static initialisers, which is why this happens in the child too."""
    lib = ctypes.CDLL(lib_path)
    fn = getattr(lib, "edgetpu_version", None)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    raw = fn()
    return raw.decode("utf-8", "replace") if raw else None


def fixed_input(detail: dict[str, Any]) -> np.ndarray:
    """A deterministic input for a model shipped without one (fixed seed, the tensor's dtype)."""
    dtype = np.dtype(detail["dtype"])
    shape = tuple(int(s) for s in detail["shape"])
    rng = np.random.default_rng(0)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    return rng.random(shape, dtype=np.float32).astype(dtype)


def load_expected(path: str) -> list[np.ndarray]:
    """Expected outputs: a .npy holds output 0, a .npz holds arr_0, arr_1, ... for outputs 0, 1, ..."""
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
        return [data]
    with data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def compare(
    outputs: list[np.ndarray], details: list[dict[str, Any]], expected: list[np.ndarray], atol: float, top1: bool
) -> tuple[bool, float, str]:
    """(match, max |difference| in dequantized units, what differs) of outputs against expected ones."""
    worst = 0.0
    for i, want in enumerate(expected):
        if i >= len(outputs) or outputs[i].shape != want.shape:
            got = outputs[i].shape if i < len(outputs) else "nothing"
            return False, float("inf"), f"output {i}: shape {got}, expected {want.shape}"
        scale, zp = tflite.quant_params(details[i]) or (1.0, 0)
        got_f = (outputs[i].astype(np.float64) - zp) * scale
        want_f = (want.astype(np.float64) - zp) * scale
        diff = float(np.max(np.abs(got_f - want_f))) if want.size else 0.0
        worst = max(worst, diff)
        if diff > atol:
            return False, worst, f"output {i}: max |difference| {diff:.4g} > tolerance {atol:g}"
        if top1 and int(np.argmax(outputs[i])) != int(np.argmax(want)):
            return False, worst, f"output {i}: top-1 {int(np.argmax(outputs[i]))}, expected {int(np.argmax(want))}"
    return True, worst, ""


def _load_delegate(library: str, device: str) -> Any:
    # libedgetpu picks the first Edge TPU itself when given no "device" option.
    return tflite.load_delegate(library, {"device": device} if device else {})


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """The probe's steps, each announced before it runs; returns the final report."""
    emit(stage="runtime", runtime=tflite.RUNTIME, runtime_version=runtime_version(tflite.RUNTIME))
    if tflite.Interpreter is None:
        return {"status": "failed", "message": "no TFLite runtime importable in the probe process"}
    emit(stage="dlopen")
    emit(stage="load_delegate", library_version=library_version(args.library))
    try:
        delegate = _load_delegate(args.library, args.device)
    except (ValueError, OSError, RuntimeError, AttributeError) as exc:
        return {"status": "failed", "message": f"load_delegate: {exc}"}
    emit(stage="allocate")
    try:
        interp = tflite.make_interpreter(args.model, delegates=[delegate])
    except (ValueError, RuntimeError) as exc:
        return {"status": "failed", "message": f"interpreter for {args.model}: {exc}"}
    x = np.load(args.input, allow_pickle=False) if args.input else fixed_input(interp.get_input_details()[0])
    emit(stage="invoke")
    try:
        outputs = tflite.run(interp, x)
    except (ValueError, RuntimeError) as exc:
        return {"status": "failed", "message": f"invoke: {exc}"}
    report: dict[str, Any] = {"status": "ok", "message": "invoke succeeded (no expected outputs to compare)"}
    if args.expected:
        same, worst, what = compare(
            outputs, interp.get_output_details(), load_expected(args.expected), args.atol, args.top1
        )
        report = {
            "status": "ok" if same else "wrong_output",
            "message": f"outputs match within {args.atol:g} (max |difference| {worst:.4g})" if same else what,
            "max_abs_diff": worst,
        }
    emit(stage="teardown")
    # A mismatched library can also crash while freeing its state; do it here, before reporting ok.
    del interp, delegate
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m agent.inference.backends.probe", description=__doc__)
    ap.add_argument("--library", required=True, help="delegate library, e.g. /usr/lib/libedgetpu.so.1")
    ap.add_argument("--device", default="", help='libedgetpu device: "usb:0", "pci:0", "" for the first')
    ap.add_argument("--model", required=True, help="compiled .tflite model")
    ap.add_argument("--input", default="", help=".npy input (default: fixed-seed values)")
    ap.add_argument("--expected", default="", help=".npy/.npz expected outputs (default: none compared)")
    ap.add_argument("--atol", type=float, default=0.1, help="max |difference|, dequantized")
    ap.add_argument("--top1", action="store_true", help="also require the same argmax per output")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    emit(**run_probe(args))
    # A crash after this line (the library's exit-time destructors) still counts as a crash: the parent
    # judges by the exit signal first.
    return 0


__all__ = ["MARK", "compare", "fixed_input", "library_version", "load_expected", "main", "run_probe"]
