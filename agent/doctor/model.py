"""The doctor's data: one check's result, the whole report, and what every check gets to look at."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent.config import AgentConfig, EdgeTpuConfig
from agent.system.clock import ClockStatus, clock_status
from agent.system.host import Accounts, HostRoot
from agent.telemetry.power import Runner, run_command


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class CheckResult(BaseModel):
    name: str
    status: Status
    detail: str
    fix: str | None = Field(default=None, description="one line: what to do (set when status is not ok)")
    data: dict[str, Any] = Field(default_factory=dict, description="the facts behind the verdict")


class DoctorReport(BaseModel):
    ok: bool = Field(description="no check failed")
    node_id: str | None
    config: str | None
    root: str
    counts: dict[str, int]
    checks: list[CheckResult]

    @classmethod
    def of(cls, checks: list[CheckResult], node_id: str | None, config: Path | None, root: Path) -> DoctorReport:
        counts = {s.value: sum(c.status is s for c in checks) for s in Status}
        return cls(ok=counts["fail"] == 0, node_id=node_id, config=str(config) if config else None,
                   root=str(root), counts=counts, checks=checks)


#: Hook for the crash-isolated libedgetpu/runtime compatibility probe (agent/inference/backends/probe.py,
#: built separately). Given the context it returns the verdict; None = not wired, reported as "not probed".
CompatProbe = Callable[["DoctorContext"], CheckResult]


@dataclass
class DoctorContext:
    cfg: AgentConfig
    host: HostRoot = field(default_factory=HostRoot)
    config_path: Path | None = None
    config_error: str | None = None
    timeout: float = 5.0
    service_user: str = "edge-agent"
    runner: Runner = run_command  # vcgencmd
    clock: Callable[[], ClockStatus] = clock_status
    compat_probe: CompatProbe | None = None

    @property
    def accounts(self) -> Accounts:
        return Accounts.load(self.host)


# --- the backend preference, in one place: the config may become a discriminated union of backends ----
def edgetpu_settings(cfg: AgentConfig) -> EdgeTpuConfig:
    return cfg.backend.edgetpu


def wants_edgetpu(cfg: AgentConfig) -> bool:
    """The config asks for the Edge TPU: then a missing TPU (or its library) is a failure, not a warning."""
    return cfg.backend.prefer == "edgetpu" and cfg.backend.edgetpu.enabled


def missing_tpu_status(cfg: AgentConfig) -> Status:
    return Status.FAIL if wants_edgetpu(cfg) else Status.WARN


def ok(name: str, detail: str, **data: Any) -> CheckResult:
    return CheckResult(name=name, status=Status.OK, detail=detail, data=data)


def warn(name: str, detail: str, fix: str, **data: Any) -> CheckResult:
    return CheckResult(name=name, status=Status.WARN, detail=detail, fix=fix, data=data)


def fail(name: str, detail: str, fix: str, **data: Any) -> CheckResult:
    return CheckResult(name=name, status=Status.FAIL, detail=detail, fix=fix, data=data)


def result(name: str, status: Status, detail: str, fix: str | None, **data: Any) -> CheckResult:
    return CheckResult(name=name, status=status, detail=detail, fix=fix if status is not Status.OK else None,
                       data=data)
