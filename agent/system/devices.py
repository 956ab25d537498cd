"""Edge TPU host facts beyond enumeration (which is agent.inference.backends.edgetpu.enumerate_tpus):
USB link speed, a PCIe Coral without its driver, kernel modules, udev rules, libedgetpu and the runtime.

Formats:
- /sys/bus/usb/devices/<port>/speed: the link speed in Mbit/s, "1.5", "12", "480", "5000", "10000" or
  "20000" (kernel Documentation/ABI/testing/sysfs-bus-usb). 480 = USB 2 High Speed.
- /sys/bus/pci/devices/<BDF>/vendor, device: "0x1ac1\\n" style hex (Documentation/ABI/testing/sysfs-bus-pci).
  The M.2/mini-PCIe Coral is 1ac1:089a (Global Unichip Corp.), present on the bus even with no driver.
- /sys/module/<name>/ exists while a module is loaded (Documentation/ABI/stable/sysfs-module); the
  gasket-driver package builds two: gasket (the framework) and apex (the Edge TPU), which make /dev/apex_N.
- /var/lib/dpkg/info/<package>.list: one installed path per line; /var/lib/dpkg/status: RFC-822-style
  stanzas with Package: and Version: (dpkg(1)).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from agent.system.host import HostRoot

USB_SUPER_SPEED_MBPS = 5000.0
PCI_CORAL = ("0x1ac1", "0x089a")
DRIVER_MODULES = ("gasket", "apex")
UDEV_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d")
#: the rules file systemd/ in this repository ships
SHIPPED_UDEV_RULES = "99-edge-agent-coral.rules"
LIBEDGETPU_GLOBS = ("/usr/lib/*/libedgetpu.so.1", "/usr/lib/libedgetpu.so.1", "/usr/local/lib/libedgetpu.so.1",
                    "/usr/local/lib/*/libedgetpu.so.1")
RUNTIME_DISTS = ("ai-edge-litert", "tflite-runtime", "pycoral")


def usb_speed_mbps(device_dir: Path) -> float | None:
    try:
        return float((device_dir / "speed").read_text().strip())
    except (OSError, ValueError):
        return None


def _read_lower(p: Path) -> str:
    try:
        return p.read_text().strip().lower()
    except OSError:
        return ""


def pci_corals(host: HostRoot) -> list[str]:
    """PCI addresses of Coral Edge TPUs on the bus, whether or not a driver is bound."""
    base = host.path("/sys/bus/pci/devices")
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir()
                  if (_read_lower(d / "vendor"), _read_lower(d / "device")) == PCI_CORAL)


def loaded_modules(host: HostRoot, names: tuple[str, ...] = DRIVER_MODULES) -> dict[str, bool]:
    return {n: host.path(f"/sys/module/{n}").is_dir() for n in names}


@dataclass(frozen=True)
class UdevRule:
    path: Path
    shipped: bool  # our file, by name


def coral_udev_rules(host: HostRoot) -> list[UdevRule]:
    """Rules files naming the Coral USB ids: ours, or another package's (libedgetpu1-std ships one)."""
    found = []
    for d in UDEV_DIRS:
        base = host.path(d)
        if not base.is_dir():
            continue
        for f in sorted(base.glob("*.rules")):
            text = _read_lower(f)
            # libedgetpu's own rule matches the vendor ids alone; Google's 18d1 also makes phones: need 9302.
            if f.name == SHIPPED_UDEV_RULES or "1a6e" in text or ("18d1" in text and "9302" in text):
                found.append(UdevRule(f, f.name == SHIPPED_UDEV_RULES))
    return found


@dataclass(frozen=True)
class LibraryFile:
    path: Path  # as found (usually the .so.1 symlink)
    resolved: Path
    size: int
    sha256_12: str
    package: str | None  # dpkg package owning it, e.g. libedgetpu1-std
    package_version: str | None


def _dpkg_owner(host: HostRoot, real_path: str) -> tuple[str | None, str | None]:
    info = host.path("/var/lib/dpkg/info")
    if not info.is_dir():
        return None, None
    for lst in sorted(info.glob("*edgetpu*.list")):
        try:
            lines = lst.read_text(errors="replace").splitlines()
        except OSError:
            continue
        if real_path in lines:
            pkg = lst.name[: -len(".list")].split(":")[0]
            return pkg, _dpkg_version(host.read("/var/lib/dpkg/status") or "", pkg)
    return None, None


def _dpkg_version(status: str, package: str) -> str | None:
    for stanza in status.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.M):
            m = re.search(r"^Version: (\S+)$", stanza, re.M)
            return m[1] if m else None
    return None


def find_libedgetpu(host: HostRoot) -> list[LibraryFile]:
    out = []
    seen: set[Path] = set()
    for pattern in LIBEDGETPU_GLOBS:
        for p in sorted(host.root.glob(pattern.lstrip("/"))):
            real = p.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            data = real.read_bytes()
            try:
                host_path = "/" + str(real.relative_to(host.root.resolve()))
            except ValueError:  # a fake tree's symlink pointing out of it
                host_path = str(real)
            pkg, ver = _dpkg_owner(host, host_path)
            out.append(LibraryFile(p, real, len(data), hashlib.sha256(data).hexdigest()[:12], pkg, ver))
    return out


def runtime_versions() -> dict[str, str]:
    """Installed TFLite runtimes and Coral Python packages, by distribution name."""
    out = {}
    for dist in RUNTIME_DISTS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
