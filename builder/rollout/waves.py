"""Wave sizing: `--waves 1,25%,rest` over the target's nodes. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


class WaveSpecError(ValueError):
    """The --waves text is not a comma list of counts, percentages and a final `rest`."""


@dataclass(frozen=True)
class WaveSize:
    kind: Literal["count", "percent", "rest"]
    value: float = 0.0

    def __str__(self) -> str:
        if self.kind == "rest":
            return "rest"
        return f"{self.value:g}%" if self.kind == "percent" else str(int(self.value))


def parse_waves(spec: str) -> list[WaveSize]:
    """`1,25%,rest` -> [count 1, percent 25, rest]. `rest` may only come last."""
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in parts):
        raise WaveSpecError(f"--waves {spec!r}: give a comma list like 1,25%,rest")
    out: list[WaveSize] = []
    for i, p in enumerate(parts):
        if p == "rest":
            if i != len(parts) - 1:
                raise WaveSpecError(f"--waves {spec!r}: `rest` must be the last wave")
            out.append(WaveSize("rest"))
            continue
        try:
            if p.endswith("%"):
                pct = float(p[:-1])
                if not 0 < pct <= 100:
                    raise ValueError
                out.append(WaveSize("percent", pct))
            else:
                n = int(p)
                if n < 1:
                    raise ValueError
                out.append(WaveSize("count", n))
        except ValueError:
            raise WaveSpecError(f"--waves {spec!r}: {p!r} is not a count >= 1, a percentage in (0, 100] "
                                "or `rest`") from None
    return out


def plan_waves(sizes: list[WaveSize], nodes: list[str]) -> list[list[str]]:
    """Split `nodes` (sorted, so the plan is reproducible) into waves.

    A percentage is of the whole target, rounded up (at least one node). Waves that would be empty are
    dropped; nodes left after the last wave are not part of the rollout (end the list with `rest`)."""
    todo = sorted(set(nodes))
    total = len(todo)
    waves: list[list[str]] = []
    for size in sizes:
        if not todo:
            break
        if size.kind == "rest":
            n = len(todo)
        elif size.kind == "percent":
            n = max(1, math.ceil(size.value * total / 100 - 1e-9))
        else:
            n = int(size.value)
        waves.append(todo[:n])
        todo = todo[n:]
    return waves


__all__ = ["WaveSize", "WaveSpecError", "parse_waves", "plan_waves"]
