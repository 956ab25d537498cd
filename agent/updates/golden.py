"""The golden self-test: a new engine must reproduce the bundle's expected outputs, within its latency
budget, before it may replace the running one (see GoldenTest in agent.protocol.manifest).

Outputs are paired **by name**: the expected file is every output of the builder's INT8 model raveled in
`manifest.outputs` order, and `manifest.outputs` names each slice. The engine names its outputs through its
backend's tensors. The Edge TPU compiler may list a model's outputs in another order than the CPU model
does, so pairing by position could compare the wrong tensors. Pairing by shape or size is used only when
names are missing on either side (a pool engine, a backend without names, a manifest whose sizes do not add
up), and a log line says so.

Tolerance (`golden.atol`, default 2) counts raw output units, so for INT8/UINT8 outputs it is quantization
steps (each step is that output's `scale`). The TPU and the CPU kernels round requantization differently;
a difference of one or two steps is expected, not a fault (docs/UPDATES.md, "Golden self-test data").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.inference.frames import EngineLike
from agent.protocol.manifest import TensorSpec
from agent.security.bundle import Bundle
from agent.updates.errors import ActivationFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputPair:
    """One engine output and the expected values for it."""

    name: str
    got: np.ndarray
    expected: np.ndarray


def run_golden(engine: EngineLike, bundle: Bundle) -> float:
    """Run the bundle's golden input; raise ActivationFailed unless every output matches within tolerance
    and the (warm) latency is within budget. Returns the measured latency in ms."""
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
    pairs = pair_outputs(outs, output_names(engine), expected, bundle.manifest.outputs)
    check_pairs(pairs, golden.atol)
    if latency_ms > golden.max_latency_ms:
        raise ActivationFailed(
            f"self-test latency {latency_ms:.1f} ms over budget {golden.max_latency_ms:.0f} ms"
        )
    return latency_ms


def output_names(engine: object) -> list[str] | None:
    """The engine's output tensor names (from its backend), or None when it does not expose them."""
    backend = getattr(engine, "backend", None)
    tensors = getattr(backend, "outputs", None)
    if tensors is None:
        return None
    try:
        return [str(t.name) for t in tensors]
    except (AttributeError, TypeError):
        return None


def split_expected(expected: np.ndarray, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray] | None:
    """The flat expected vector cut into one array per named manifest output, or None when the manifest's
    names or sizes cannot describe it (unnamed or duplicate names, sizes that do not add up)."""
    names = [s.name for s in specs]
    if not specs or any(not n for n in names) or len(set(names)) != len(names):
        return None
    sizes = [int(np.prod(s.shape)) for s in specs]
    flat = expected.reshape(-1)
    if sum(sizes) != flat.size:
        return None
    cuts = np.cumsum(sizes)[:-1]
    return {s.name: part.reshape(s.shape) for s, part in zip(specs, np.split(flat, cuts), strict=True)}


def pair_outputs(outs: Sequence[np.ndarray], names: Sequence[str] | None, expected: np.ndarray,
                 specs: Sequence[TensorSpec]) -> list[OutputPair]:
    """Pair each engine output with its expected values: by name when both sides name them, else by the
    legacy size rule (logged). Raises ActivationFailed with the reason when they cannot be paired."""
    by_name = split_expected(expected, specs)
    usable = names is not None and len(names) == len(outs) and all(names) and len(set(names)) == len(names)
    if by_name is not None and names is not None and usable:
        missing = sorted(set(by_name) - set(names))
        unexpected = sorted(set(names) - set(by_name))
        if missing or unexpected:
            raise ActivationFailed(f"self-test outputs do not match the manifest by name: engine has "
                                   f"{unexpected or 'no extra'}, missing {missing or 'none'}")
        pairs = [OutputPair(n, np.asarray(o), by_name[n]) for n, o in zip(names, outs, strict=True)]
        for p in pairs:
            if p.got.size != p.expected.size:
                raise ActivationFailed(f"self-test output {p.name!r} has shape {tuple(p.got.shape)}, "
                                       f"expected {tuple(p.expected.shape)}")
        return pairs
    log.info("golden self-test: output names unavailable (engine names %s, manifest names %s); "
             "pairing outputs by size, in engine order", names, [s.name for s in specs])
    got = match_outputs(outs, expected)
    if got is None:
        shapes = [tuple(o.shape) for o in outs]
        raise ActivationFailed(f"self-test output shapes {shapes} do not match expected {tuple(expected.shape)}")
    return [OutputPair("outputs", got, expected.reshape(got.shape))]


def check_pairs(pairs: Sequence[OutputPair], atol: float) -> None:
    """Raise ActivationFailed naming the first output that is not finite or differs by more than atol."""
    for p in pairs:
        a = p.got.astype(np.float64)
        b = p.expected.astype(np.float64).reshape(a.shape)
        if not np.all(np.isfinite(a)):
            raise ActivationFailed(f"self-test output {p.name!r} contains NaN or Inf")
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        if err > atol:
            raise ActivationFailed(f"self-test output {p.name!r} differs from expected: "
                                   f"max abs error {err:.3g} > atol {atol}")


def match_outputs(outs: Sequence[np.ndarray], expected: np.ndarray) -> np.ndarray | None:
    """Legacy pairing (no names): the engine's outputs in the expected file's layout (the one output, or
    all of them flattened and concatenated in engine order), or None when the sizes cannot match."""
    if len(outs) == 1 and outs[0].size == expected.size:
        return np.asarray(outs[0])
    if sum(o.size for o in outs) == expected.size:
        return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outs])
    return None


__all__ = ["OutputPair", "check_pairs", "match_outputs", "output_names", "pair_outputs", "run_golden",
           "split_expected"]
