"""Doctor checks for the software base: config, OS/architecture/Python, TFLite runtime, libedgetpu."""

from __future__ import annotations

import platform
import sys

from agent.doctor import model
from agent.doctor.model import CheckResult, DoctorContext, fail, ok, result, warn
from agent.system.devices import find_libedgetpu, runtime_versions
from agent.system.host import parse_os_release

#: architectures ai-edge-litert publishes wheels for (pyproject.toml's marker)
WHEEL_ARCHES = ("x86_64", "aarch64")
MIN_PYTHON = (3, 11)


def check_config(ctx: DoctorContext) -> CheckResult:
    if ctx.config_error:
        return fail("config", ctx.config_error.splitlines()[0] + (" …" if "\n" in ctx.config_error else ""),
                    "fix the keys named above (edge-agent check --config FILE shows them all)",
                    error=ctx.config_error)
    where = str(ctx.config_path) if ctx.config_path else "defaults and EDGE_AGENT_* environment (no --config)"
    return ok("config", f"node {ctx.cfg.node_id} from {where}", node_id=ctx.cfg.node_id)


def _board_model(ctx: DoctorContext) -> str | None:
    # /proc/device-tree is a link to /sys/firmware/devicetree/base; `model` is NUL-terminated.
    text = ctx.host.read("/sys/firmware/devicetree/base/model") or ctx.host.read("/proc/device-tree/model")
    return text.rstrip("\0\n") if text else None


def check_os(ctx: DoctorContext) -> CheckResult:
    rel = parse_os_release(ctx.host.read("/etc/os-release") or ctx.host.read("/usr/lib/os-release") or "")
    os_name = rel.get("PRETTY_NAME") or platform.system()
    arch = platform.machine()
    py = ".".join(map(str, sys.version_info[:3]))
    board = _board_model(ctx)
    data = {"os": os_name, "arch": arch, "python": py, "kernel": platform.release(), "board": board}
    detail = f"{os_name}, {arch}, Python {py}, kernel {platform.release()}" + (f", {board}" if board else "")
    if sys.version_info[:2] < MIN_PYTHON:
        return fail("os", detail, "the agent needs Python >= 3.11: use the OS's python3.11+ for the venv", **data)
    if arch not in WHEEL_ARCHES:
        return warn("os", detail + " (no ai-edge-litert wheels for this architecture)",
                    "use a 64-bit OS (Raspberry Pi OS arm64): LiteRT wheels exist for x86_64 and aarch64 only",
                    **data)
    return ok("os", detail, **data)


def check_runtime(ctx: DoctorContext) -> CheckResult:
    versions = runtime_versions()
    listing = ", ".join(f"{k} {v}" for k, v in versions.items()) or "none"
    if "ai-edge-litert" in versions or "tflite-runtime" in versions:
        return ok("runtime", f"installed: {listing}", **versions)
    return fail("runtime", "no TFLite runtime installed (ai-edge-litert or tflite-runtime)",
                "pip install 'edge-fleet[agent]' in the agent's venv (brings ai-edge-litert)", **versions)


def check_libedgetpu(ctx: DoctorContext) -> CheckResult:
    libs = find_libedgetpu(ctx.host)
    if not libs:
        return result("libedgetpu", model.missing_tpu_status(ctx.cfg),
                      "libedgetpu.so.1 not found in /usr/lib, /usr/lib/<triplet>, /usr/local/lib",
                      "install the libedgetpu build matched to your runtime's TensorFlow version "
                      "(docs/DOCTOR.md); Google's 2021 packages only suit old runtimes")
    first = libs[0]
    desc = [f"{lib.path} -> {lib.resolved.name} ({lib.size} bytes, sha256 {lib.sha256_12}"
            + (f", {lib.package} {lib.package_version}" if lib.package else ", not from a dpkg package") + ")"
            for lib in libs]
    data = {"files": [{"path": str(lib.path), "resolved": str(lib.resolved), "size": lib.size,
                       "sha256_12": lib.sha256_12, "package": lib.package, "version": lib.package_version}
                      for lib in libs]}
    if len(libs) > 1:
        return warn("libedgetpu", "; ".join(desc), f"more than one copy: the loader takes the first on its path "
                    f"({first.path}); remove the others to know which one runs", **data)
    return ok("libedgetpu", desc[0], **data)


def check_compat(ctx: DoctorContext) -> CheckResult:
    """libedgetpu is built against one TFLite version; loading it into another can crash the process.

    The verdict must come from a child process (agent/inference/backends/probe.py), through the hook
    DoctorContext.compat_probe (agent.doctor.compat); without a hook this check says so, never guesses.
    """
    if not model.wants_edgetpu(ctx.cfg):
        return ok("edgetpu-compat", "not needed: the config does not use the Edge TPU")
    if ctx.compat_probe is None:
        return warn("edgetpu-compat", "not probed: runtime/libedgetpu compatibility is unknown",
                    "no probe hook set (DoctorContext.compat_probe); `edge-agent doctor` sets one", probed=False)
    try:
        return ctx.compat_probe(ctx)
    except Exception as exc:  # a broken probe must not take the whole report down
        return warn("edgetpu-compat", f"probe error: {exc}", "report this as a bug", probed=False)
