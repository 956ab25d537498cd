"""Coral Edge TPU backend: the libedgetpu delegate, loaded in-process only once a child probe cleared it.

libedgetpu is ABI-coupled to the TFLite runtime it was built for; the wrong pairing segfaults or hangs the
process that loads it. So open() first asks probe.clearance() (the delegate run in a throwaway child, its
verdict cached per library file, runtime and device) and loads the delegate only when that verdict is ok,
from the very file the probe checked, into the runtime the probe ran. pycoral is not used: its
make_interpreter pairs its own tflite_runtime with whatever libedgetpu it finds, which the probe never saw.
See docs/TPU_PROBE.md.

Device enumeration reads the kernel's own views, as pycoral/libedgetpu do:
- PCIe/M.2 Corals: the gasket/apex driver creates /dev/apex_N (and /sys/class/apex/apex_N).
- USB Corals: /sys/bus/usb/devices/<port>/idVendor and idProduct hold 4 hex digits and a newline.
  An accelerator shows up as 1a6e:089a (Global Unichip) until libedgetpu loads its firmware,
  then re-enumerates as 18d1:9302 (Google). Both count as a TPU present.
Tests point `sysfs_root`/`dev_root` at a fake tree in exactly that format.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from agent.inference.backends.base import AcceleratorSettings, BackendError, BackendSettings
from agent.inference.backends.tflite_backend import TfliteBackend

if TYPE_CHECKING:
    from agent.inference.backends.probe import ProbeVerdict  # imports the TFLite runtime: not at import time

USB_IDS = {("1a6e", "089a"): "unprogrammed", ("18d1", "9302"): "ready"}
_TPU_DEVICE = re.compile(r"^(usb|pci)(:\d+)?$")


class EdgeTpuConfig(AcceleratorSettings):
    """Coral Edge TPU. device: "usb", "usb:N", "pci", "pci:N" (libedgetpu's syntax); "" = first found."""

    type: Literal["edgetpu"] = "edgetpu"
    device: str = ""
    devices: list[str] | Literal["all"] = Field(
        default_factory=list, description='a TPU pool: ["usb:0", "usb:1"] or "all"; the model runs on each, '
        "cameras are spread over them (agent/inference/pool.py). Empty: the one `device`")
    library: str = "libedgetpu.so.1"
    # probe.DEFAULT_TIMEOUT_S (not imported: probe loads the TFLite runtime, config must not).
    probe_timeout_s: float = Field(
        default=30.0, gt=0, description="a probe child still running after this long counts as hung and is killed")
    state_dir: Path | None = Field(
        default=None, description="where probe verdicts are cached; the Engine fills in the agent's state_dir. "
        "None: no cache, every open probes")
    # Where enumeration looks; changed only by tests and containers.
    sysfs_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v and not _TPU_DEVICE.match(v):
            raise ValueError(f"edgetpu device must be usb, usb:N, pci or pci:N, not {v!r}")
        return v

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            bad = [d for d in v if not _TPU_DEVICE.match(d)]
            if bad or len(set(v)) != len(v):
                raise ValueError(f"edgetpu devices must be distinct usb:N / pci:N (or \"all\"), not {v!r}")
        return v


@dataclass(frozen=True)
class TpuDevice:
    kind: str  # "usb" | "pci"
    index: int  # N in libedgetpu's "usb:N" / "pci:N"
    path: str  # sysfs dir (usb) or /dev/apex_N (pci)
    detail: str = ""

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.index}"


def _read(p: Path) -> str:
    try:
        return p.read_text().strip().lower()
    except OSError:
        return ""


def enumerate_tpus(sysfs_root: str | Path = "/sys", dev_root: str | Path = "/dev") -> list[TpuDevice]:
    """Every Edge TPU visible to this host, PCIe first, each kind numbered from 0."""
    found: list[TpuDevice] = []
    apex = sorted(glob.glob(os.path.join(str(dev_root), "apex_*")), key=_natural)
    for i, path in enumerate(apex):
        found.append(TpuDevice("pci", i, path, "apex"))
    usb_dir = Path(sysfs_root) / "bus" / "usb" / "devices"
    usb: list[TpuDevice] = []
    if usb_dir.is_dir():
        for dev in sorted(usb_dir.iterdir(), key=lambda p: _natural(p.name)):
            ids = (_read(dev / "idVendor"), _read(dev / "idProduct"))
            if ids in USB_IDS:
                usb.append(TpuDevice("usb", len(usb), str(dev), USB_IDS[ids]))
    return found + usb


def _natural(s: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def select_device(cfg_device: str, present: list[TpuDevice]) -> TpuDevice:
    """Resolve "", "usb", "usb:N", "pci", "pci:N" against what is present; BackendError if absent."""
    if not present:
        raise BackendError("no Edge TPU found (no /dev/apex_*, no USB 1a6e:089a or 18d1:9302)")
    if not cfg_device:
        return present[0]
    kind, _, num = cfg_device.partition(":")
    of_kind = [d for d in present if d.kind == kind]
    if not of_kind:
        have = ", ".join(d.spec for d in present)
        raise BackendError(f"no {kind} Edge TPU found (present: {have})")
    if not num:
        return of_kind[0]
    for d in of_kind:
        if d.index == int(num):
            return d
    raise BackendError(f"Edge TPU {cfg_device} not found (present: {', '.join(d.spec for d in present)})")


class EdgeTpuBackend(TfliteBackend):
    name = "edgetpu"
    label = "Edge TPU"
    model = "edgetpu"
    # Backends of this class open in this process: while one holds the TPU (the running engine during an
    # update), a probe child would only find the device busy, so unprobed libraries wait. Weak: one
    # dropped without close() stops counting once collected.
    _open: ClassVar[weakref.WeakSet[EdgeTpuBackend]] = weakref.WeakSet()
    _open_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, interpreter: Any, device: str, model_path: str) -> None:
        super().__init__(interpreter, device, model_path)
        with EdgeTpuBackend._open_lock:
            EdgeTpuBackend._open.add(self)

    @classmethod
    def device_held(cls) -> bool:
        with EdgeTpuBackend._open_lock:
            return len(EdgeTpuBackend._open) > 0

    @classmethod
    def open(cls, model_path: Path | str, cfg: BackendSettings | None = None) -> EdgeTpuBackend:
        cfg = cfg if isinstance(cfg, EdgeTpuConfig) else EdgeTpuConfig()
        if not cfg.enabled:
            raise BackendError("Edge TPU disabled in config")
        # Always "kind:N", so probe verdicts cached for a device match whatever form the config used.
        spec = select_device(cfg.device, enumerate_tpus(cfg.sysfs_root, cfg.dev_root)).spec
        verdict = cleared(cfg, spec)
        assert verdict.identity is not None  # cleared() returns only verdicts for a found file
        from agent.inference import tflite

        try:
            delegate = tflite.load_delegate(verdict.identity.realpath, {"device": spec})
            interp = tflite.load_interpreter(model_path, delegates=[delegate])
        except (RuntimeError, ValueError, OSError) as exc:
            # Cleared, yet failing here (e.g. the device is busy): name the pair as the probe does.
            pair = f"library {verdict.identity.realpath} ({verdict.library_version or 'version unknown'}), " \
                   f"TFLite runtime {verdict.runtime} {verdict.runtime_version}"
            raise BackendError(f"Edge TPU {spec} unusable: {exc} - {pair}") from exc
        return cls(interp, spec, str(model_path))

    @classmethod
    def change_token(cls, cfg: BackendSettings) -> object:
        """Changes when a retry could give another answer: the library file's identity (an upgrade or
        replaced file is probed again at once, not at the next periodic retry)."""
        from agent.inference.backends.probe import LibraryIdentity

        lib = cfg.library if isinstance(cfg, EdgeTpuConfig) else EdgeTpuConfig().library
        return LibraryIdentity.find(lib)

    def close(self) -> None:
        super().close()
        with EdgeTpuBackend._open_lock:
            EdgeTpuBackend._open.discard(self)


def cleared(cfg: EdgeTpuConfig, spec: str) -> ProbeVerdict:
    """The child probe's ok verdict for cfg.library on `spec` (its identity: the file to load in-process);
    BackendError naming the library, its version and the TFLite runtime when it is not ok (or cannot be
    probed now)."""
    from agent.inference.backends import probe

    held = EdgeTpuBackend.device_held()
    if cfg.state_dir is not None:
        verdict = probe.clearance(cfg.state_dir, cfg.library, spec, device_held=held, timeout=cfg.probe_timeout_s)
    else:
        verdict = None if held else probe.probe_tpu(cfg.library, spec, timeout=cfg.probe_timeout_s)
    if verdict is None:
        raise BackendError(f"Edge TPU {spec}: {cfg.library} not probed yet and the Edge TPU is in use; retrying later")
    if not verdict.cleared or verdict.identity is None:
        raise BackendError(f"Edge TPU {spec} unusable: {verdict.reason}")
    return verdict
