"""The golden self-test: a new engine must reproduce the bundle's expected outputs, within its latency
budget, before it may replace the running one (see GoldenTest in agent.protocol.manifest)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from agent.inference.frames import EngineLike
from agent.security.bundle import Bundle
from agent.updates.errors import ActivationFailed


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
    got = match_outputs(outs, expected)
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


def match_outputs(outs: Sequence[np.ndarray], expected: np.ndarray) -> np.ndarray | None:
    """The engine's outputs in the expected file's layout (the one output, or all of them flattened
    and concatenated), or None when the sizes cannot match."""
    if len(outs) == 1 and outs[0].size == expected.size:
        return np.asarray(outs[0])
    if sum(o.size for o in outs) == expected.size:
        return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outs])
    return None


__all__ = ["match_outputs", "run_golden"]
