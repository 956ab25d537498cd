"""What every benchmark does at its end: judge its targets, write its JSON result, exit non-zero on a miss.

A benchmark that only prints MISSED lets a regression through `make bench` unnoticed; here a missed target
is exit status 3 (an error that stopped the measurement stays 1), so make and CI see it. The result file
carries the targets, the verdict, the commit and the machine (CPU model, its int8 ISA flags and whether it has
int8 dot-product instructions: INT8 latencies depend on them; the load average), so a file in
bench/results/reference/ says what it measured.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MISSED = 3  # exit status of a benchmark that ran to the end and missed a target

# bench_dashboard.py (issue 8 at 50 nodes; issue 12 "Scale" at 1,000 nodes at 1 Hz through one Mosquitto):
DASHBOARD_MAX_STALENESS_S = 2.0  # the largest delay seen on the SSE stream and in the page
DASHBOARD_P95_SHOWN_S = 1.0  # p95, node timestamp -> written into a row in view, inside headless Chromium
DASHBOARD_PAGE_CPU_PERCENT = 50.0  # Chromium (all its processes) rendering the page, % of one core
DASHBOARD_SERVER_RSS_MB = 300.0  # the dashboard process under load
SHADOW_MAX_LOSS = 0.10  # issue 15: a shadow run (>= 1 frame/s) costs the live pipeline at most this share of its FPS


@dataclass(frozen=True)
class Target:
    """`value` must be at most (`at_most`) or at least `limit`; None (not measured) misses."""

    name: str
    value: float | None
    limit: float
    at_most: bool
    unit: str = ""

    @property
    def ok(self) -> bool:
        if self.value is None:
            return False
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def line(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:.4g}{self.unit}"
        return (f"target {self.name}: {shown} (aim {'<=' if self.at_most else '>='} {self.limit:g}{self.unit})"
                f" -> {'ok' if self.ok else 'MISSED'}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit,
                "rule": "at_most" if self.at_most else "at_least", "unit": self.unit, "ok": self.ok}


def machine() -> dict[str, Any]:
    """The machine a result was measured on: CPU model and int8 ISA flags (builder.evaluate.cpuinfo), load."""
    from builder.evaluate import cpuinfo

    cpu = cpuinfo.read()
    return {"cpu": cpu.model, "arch": cpu.arch, "cpus": cpu.cpus, "int8_flags": list(cpu.flags),
            "int8_dot_product": cpu.int8_dot_product, "python": platform.python_version(),
            "load_average": round(os.getloadavg()[0], 2)}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def finish(result: dict[str, Any], targets: list[Target], out: Path) -> int:
    """Print the verdicts, write `result` (+ targets, verdict, provenance) to `out`; the exit status."""
    print()
    for t in targets:
        print(t.line())
    met = all(t.ok for t in targets)
    result = {**result, "targets": [t.as_dict() for t in targets], "targets_met": met,
              "run": {"command": shlex.join(["python", *sys.argv]), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": _commit(),
                      "machine": machine()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not met:
        print(f"MISSED {sum(not t.ok for t in targets)} of {len(targets)} targets: exit status {MISSED}")
    return 0 if met else MISSED
