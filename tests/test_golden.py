"""The golden self-test pairs outputs by name (the Edge TPU compiler may reorder them), falls back to sizes
only without names, and says which output failed and why."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.protocol.manifest import GoldenTest, TensorSpec
from agent.updates.errors import ActivationFailed
from agent.updates.golden import pair_outputs, run_golden

SPECS = [TensorSpec(name="boxes", shape=[1, 4, 4], dtype="uint8", scale=0.1, zero_point=0),
         TensorSpec(name="scores", shape=[1, 4, 4], dtype="uint8", scale=0.004, zero_point=0),
         TensorSpec(name="extra", shape=[1, 3], dtype="uint8", scale=0.5, zero_point=0)]
RNG = np.random.default_rng(7)
OUTS = {s.name: RNG.integers(0, 250, s.shape, dtype=np.uint8) for s in SPECS}
FLAT = np.concatenate([OUTS[s.name].reshape(-1) for s in SPECS])  # manifest order, as the converter writes


@dataclass
class _Tensor:
    name: str


@dataclass
class _Backend:
    outputs: list[_Tensor]


@dataclass
class _Engine:
    names: list[str] | None
    outs: list[np.ndarray]
    backend: _Backend | None = field(init=False)

    def __post_init__(self) -> None:
        self.backend = None if self.names is None else _Backend([_Tensor(n) for n in self.names])

    def invoke_raw(self, input: np.ndarray) -> list[np.ndarray]:  # noqa: A002 - mirrors Engine
        return self.outs


@dataclass
class _Manifest:
    golden: GoldenTest
    outputs: list[TensorSpec]


@dataclass
class _Bundle:
    root: Path
    manifest: _Manifest

    def path(self, rel: str) -> Path:
        return self.root / rel


def _bundle(tmp_path: Path, expected: np.ndarray, atol: float = 2.0) -> Any:
    np.save(tmp_path / "in.npy", np.zeros((1, 8, 8, 3), np.uint8))
    np.save(tmp_path / "exp.npy", expected)
    return _Bundle(tmp_path, _Manifest(GoldenTest(input="in.npy", expected="exp.npy", atol=atol), SPECS))


def test_permuted_outputs_match_by_name(tmp_path: Path) -> None:
    order = ["scores", "extra", "boxes"]  # what an Edge TPU model may report
    eng = _Engine(order, [OUTS[n] for n in order])
    assert run_golden(eng, _bundle(tmp_path, FLAT)) >= 0  # type: ignore[arg-type]
    pairs = pair_outputs(eng.outs, order, FLAT, SPECS)
    assert [p.name for p in pairs] == order
    assert all(np.array_equal(p.got, p.expected) for p in pairs)


def test_same_shaped_outputs_swapped_are_not_confused(tmp_path: Path) -> None:
    """boxes and scores have the same shape: by position they would be compared crosswise and fail."""
    order = ["scores", "boxes", "extra"]
    eng = _Engine(order, [OUTS[n] for n in order])
    run_golden(eng, _bundle(tmp_path, FLAT))  # type: ignore[arg-type]
    legacy = _Engine(None, [OUTS[n] for n in order])  # no names: the positional rule, which is wrong here
    with pytest.raises(ActivationFailed, match="differs"):
        run_golden(legacy, _bundle(tmp_path, FLAT))  # type: ignore[arg-type]


def test_wrong_name_fails_with_reason(tmp_path: Path) -> None:
    names = ["boxes", "scores_renamed", "extra"]
    eng = _Engine(names, [OUTS["boxes"], OUTS["scores"], OUTS["extra"]])
    with pytest.raises(ActivationFailed) as err:
        run_golden(eng, _bundle(tmp_path, FLAT))  # type: ignore[arg-type]
    msg = str(err.value)
    assert "by name" in msg and "scores_renamed" in msg and "'scores'" in msg


def test_tolerance_is_per_output_in_quantization_steps(tmp_path: Path) -> None:
    names = [s.name for s in SPECS]
    near = [OUTS[n].astype(np.int32) for n in names]
    near[1] = near[1] + 2  # two steps off: within atol 2
    ok = _Engine(names, [o.astype(np.uint8) for o in near])
    run_golden(ok, _bundle(tmp_path, FLAT))  # type: ignore[arg-type]
    near[1] = near[1] + 1  # three steps off
    bad = _Engine(names, [o.astype(np.uint8) for o in near])
    with pytest.raises(ActivationFailed, match="'scores' differs"):
        run_golden(bad, _bundle(tmp_path, FLAT))  # type: ignore[arg-type]


def test_without_names_falls_back_to_sizes_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = [s.name for s in SPECS]
    eng = _Engine(None, [OUTS[n] for n in names])
    with caplog.at_level(logging.INFO, logger="agent.updates.golden"):
        run_golden(eng, _bundle(tmp_path, FLAT))  # type: ignore[arg-type]
    assert "names unavailable" in caplog.text
    with pytest.raises(ActivationFailed, match="shapes"):
        pair_outputs([np.zeros(5, np.uint8)], None, FLAT, SPECS)


def test_wrong_shape_under_right_name_fails(tmp_path: Path) -> None:
    names = [s.name for s in SPECS]
    outs = [OUTS["boxes"], OUTS["scores"], np.zeros((1, 2), np.uint8)]
    with pytest.raises(ActivationFailed, match="'extra' has shape"):
        pair_outputs(outs, names, FLAT, SPECS)
