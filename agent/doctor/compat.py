"""The runtime/libedgetpu compatibility verdict for doctor, from the crash-isolated probe
(agent.inference.backends.probe, docs/TPU_PROBE.md). Two hooks for DoctorContext.compat_probe:

- `stored_verdict`: what the daemon stored in <state_dir>/tpu_probe.json for the library file, runtime and
  device as they are now. Starts no child, so it is safe while the agent holds the TPU (default).
- `live_probe`: a fresh child probe (`edge-agent doctor --probe`). A USB Coral opens for one process at a
  time: stop the agent first, or the child only sees a busy device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.doctor.model import CheckResult, DoctorContext, edgetpu_settings, fail, ok, warn
from agent.doctor.tpu import tpus
from agent.inference.backends.base import BackendError
from agent.inference.backends.edgetpu import select_device

if TYPE_CHECKING:
    from agent.inference.backends.probe import ProbeVerdict

NAME = "edgetpu-compat"
MIN_PROBE_TIMEOUT_S = 30.0  # child start + USB firmware upload + first invoke on a Pi


def _device_spec(ctx: DoctorContext) -> str | None:
    """The resolved "usb:0"/"pci:0" the daemon probes with (the verdict cache is keyed by it)."""
    try:
        return select_device(edgetpu_settings(ctx.cfg).device, tpus(ctx)).spec
    except BackendError:
        return None


def judge(v: ProbeVerdict) -> CheckResult:
    data = v.model_dump(mode="json", exclude={"stderr_tail"})
    pair = f"{v.library} with {v.runtime} {v.runtime_version} on {v.device}"
    if v.cleared:
        return ok(NAME, f"{pair}: ok" + (" (stored verdict)" if v.from_cache else " (probed now)"), **data)
    fix = (f"install the libedgetpu build made for {v.runtime} {v.runtime_version} (docs/DOCTOR.md); "
           "until then the agent runs the CPU model")
    if v.identity is None:
        return fail(NAME, v.reason, "install libedgetpu (see the libedgetpu check)", **data)
    if v.definitive:  # crashed or wrong output: it will do so again
        return fail(NAME, v.reason, fix, **data)
    return warn(NAME, v.reason, "replug the Coral, stop the agent and run `edge-agent doctor --probe`; " + fix,
                **data)


def stored_verdict(ctx: DoctorContext) -> CheckResult:
    from agent.inference.backends import probe

    spec = _device_spec(ctx)
    lib = edgetpu_settings(ctx.cfg).library
    if spec is None:
        return warn(NAME, "not probed: no Edge TPU to probe", "see the tpu check")
    v = probe.cached_verdict(ctx.host.path(ctx.cfg.state_dir), lib, spec)
    if v is None:
        runtime, version = probe.current_runtime()
        return warn(NAME, f"not probed yet: {lib} with {runtime} {version} on {spec}",
                    "start the agent (it probes before using the TPU), or stop it and run "
                    "`edge-agent doctor --probe`", probed=False)
    return judge(v)


def live_probe(ctx: DoctorContext) -> CheckResult:
    from agent.inference.backends import probe

    spec = _device_spec(ctx)
    if spec is None:
        return warn(NAME, "not probed: no Edge TPU to probe", "see the tpu check")
    lib = edgetpu_settings(ctx.cfg).library
    return judge(probe.probe_tpu(lib, spec, timeout=max(ctx.timeout, MIN_PROBE_TIMEOUT_S)))
