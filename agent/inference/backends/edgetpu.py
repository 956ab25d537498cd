"""Coral Edge TPU backend: Google's pycoral when importable, else the libedgetpu delegate.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from agent.inference.backends.base import AcceleratorSettings, BackendError, BackendSettings
from agent.inference.backends.tflite_backend import TfliteBackend

USB_IDS = {("1a6e", "089a"): "unprogrammed", ("18d1", "9302"): "ready"}
_TPU_DEVICE = re.compile(r"^(usb|pci)(:\d+)?$")


class EdgeTpuConfig(AcceleratorSettings):
    """Coral Edge TPU. device: "usb", "usb:N", "pci", "pci:N" (libedgetpu's syntax); "" = first found."""

    type: Literal["edgetpu"] = "edgetpu"
    device: str = ""
    library: str = "libedgetpu.so.1"
    # Where enumeration looks; changed only by tests and containers.
    sysfs_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v and not _TPU_DEVICE.match(v):
            raise ValueError(f"edgetpu device must be usb, usb:N, pci or pci:N, not {v!r}")
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


def _pycoral() -> object | None:
    """Google's pycoral (from the Coral apt repo), never PyPI's same-named squat."""
    try:
        from pycoral.utils import edgetpu  # type: ignore[import-not-found]
    except Exception:  # ImportError, or its tflite_runtime failing under numpy 2
        return None
    return edgetpu if hasattr(edgetpu, "make_interpreter") else None


class EdgeTpuBackend(TfliteBackend):
    name = "edgetpu"
    label = "Edge TPU"
    model = "edgetpu"

    @classmethod
    def open(cls, model_path: Path | str, cfg: BackendSettings | None = None) -> EdgeTpuBackend:
        cfg = cfg if isinstance(cfg, EdgeTpuConfig) else EdgeTpuConfig()
        if not cfg.enabled:
            raise BackendError("Edge TPU disabled in config")
        dev = select_device(cfg.device, enumerate_tpus(cfg.sysfs_root, cfg.dev_root))
        # libedgetpu's own device syntax; pass the kind-only form when the index is implicit.
        spec = cfg.device or dev.spec
        coral = _pycoral()
        try:
            if coral is not None:
                interp = coral.make_interpreter(str(model_path), device=spec)  # type: ignore[attr-defined]
                interp.allocate_tensors()
            else:
                from agent.inference import tflite

                delegate = tflite.load_delegate(cfg.library, {"device": spec})
                interp = tflite.load_interpreter(model_path, delegates=[delegate])
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendError(f"Edge TPU {spec} unusable: {exc}") from exc
        return cls(interp, spec, str(model_path))
