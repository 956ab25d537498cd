"""The doctor's registry: every check of `edge-agent doctor`, in report order (CHECKS), and running them.

The check modules (platform, tpu, services, node) import only agent.doctor.model, never this registry. A check is a function DoctorContext -> CheckResult; one that
raises is reported as a failure of that check, never as a crash of the whole report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.doctor import node, platform, services, tpu
from agent.doctor.model import CheckResult, DoctorContext, Status, result


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[DoctorContext], CheckResult]
    needs_config: bool = True  # skipped (warn) when the config itself is invalid


CHECKS: list[Check] = [
    Check("config", platform.check_config, needs_config=False),
    Check("os", platform.check_os, needs_config=False),
    Check("runtime", platform.check_runtime, needs_config=False),
    Check("libedgetpu", platform.check_libedgetpu),
    Check("edgetpu-compat", platform.check_compat),
    Check("tpu", tpu.check_tpus),
    Check("usb-link", tpu.check_usb_link),
    Check("apex-driver", tpu.check_apex_driver),
    Check("apex-permissions", tpu.check_apex_permissions),
    Check("udev", tpu.check_udev_rules),
    Check("groups", tpu.check_groups),
    Check("camera", services.check_camera),
    Check("broker", services.check_broker),
    Check("keys", services.check_keys),
    Check("clock", node.check_clock, needs_config=False),
    Check("disk", node.check_disk),
    Check("power", node.check_power, needs_config=False),
    Check("state-dir", node.check_state_dir),
]


def run_check(check: Check, ctx: DoctorContext) -> CheckResult:
    if check.needs_config and ctx.config_error:
        return result(check.name, Status.WARN, "not checked: the config is invalid", "fix the config first")
    try:
        return check.run(ctx)
    except Exception as exc:  # one broken probe must not hide the others
        return result(check.name, Status.FAIL, f"check crashed: {type(exc).__name__}: {exc}",
                      "report this with the output of `edge-agent doctor --json`")


def run_checks(ctx: DoctorContext, only: list[str] | None = None) -> list[CheckResult]:
    return [run_check(c, ctx) for c in CHECKS if not only or c.name in only]
