"""The CPU a latency was measured on: its model and the ISA flags INT8 speed depends on (from /proc/cpuinfo).

INT8 convolutions are fast only where the CPU has int8 dot-product instructions: x86 VNNI (avx512_vnni,
avx_vnni; AMX on the newest Xeons), Arm SDOT/UDOT (`asimddp`, Armv8.2 dot product: Cortex-A76 in the Pi 5,
not Cortex-A72 in the Pi 4) and i8mm (SMMLA). Without them XNNPACK's int8 kernels widen to 16 bits and can be
no faster than float, so every latency figure carries these flags. `parse` is pure; `read` does the I/O.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Flags as the Linux kernel names them in /proc/cpuinfo ("flags" on x86, "Features" on Arm).
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")
DOT_PRODUCT = frozenset({"avx512_vnni", "avx_vnni", "asimddp"})
# Arm "CPU part" numbers (implementer 0x41) of the cores Raspberry Pis use.
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76"}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str
    cpus: int | None
    flags: tuple[str, ...]  # the INT8_FLAGS present, in INT8_FLAGS order

    @property
    def int8_dot_product(self) -> bool:
        return bool(DOT_PRODUCT & set(self.flags))

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "arch": self.arch, "cpus": self.cpus, "int8_flags": list(self.flags),
                "int8_dot_product": self.int8_dot_product}

    def line(self) -> str:
        dot = "has int8 dot-product instructions" if self.int8_dot_product else "no int8 dot-product instructions"
        return f"{self.model} ({self.arch}, {self.cpus} CPUs); int8 ISA flags: {' '.join(self.flags) or 'none'}; {dot}"


def parse(cpuinfo: str, arch: str = "", cpus: int | None = None, board: str = "") -> CpuInfo:
    """CpuInfo from the text of /proc/cpuinfo (and, on Arm boards, /proc/device-tree/model as `board`)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    present = set((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or fields.get("Model") or board
    part = ARM_PARTS.get(fields.get("CPU part", "").lower())
    if part:
        model = f"{board or model} ({part})" if (board or model) else part
    return CpuInfo(model or arch or "unknown", arch, cpus, tuple(f for f in INT8_FLAGS if f in present))


def read() -> CpuInfo:
    """This machine's CpuInfo (unknown model and no flags where /proc/cpuinfo is unreadable)."""
    def text(path: str) -> str:
        try:
            return Path(path).read_text(errors="replace").replace("\x00", "").strip()
        except OSError:
            return ""

    return parse(text("/proc/cpuinfo"), platform.machine(), os.cpu_count(), text("/proc/device-tree/model"))
