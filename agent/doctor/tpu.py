"""Doctor checks for the Edge TPU hardware path: devices, USB link, apex driver, device nodes, udev, groups."""

from __future__ import annotations

import os
from pathlib import Path

from agent.doctor.model import (
    CheckResult,
    DoctorContext,
    Status,
    edgetpu_settings,
    fail,
    missing_tpu_status,
    ok,
    result,
    wants_edgetpu,
    warn,
)
from agent.inference.backends.edgetpu import TpuDevice, enumerate_tpus
from agent.system.devices import (
    SHIPPED_UDEV_RULES,
    USB_SUPER_SPEED_MBPS,
    coral_udev_rules,
    loaded_modules,
    pci_corals,
    usb_speed_mbps,
)
from agent.system.host import NodeInfo

#: groups the shipped unit and sysusers.conf give the service (systemd/edge-agent.sysusers.conf)
SERVICE_GROUPS = ("plugdev", "video")


def tpus(ctx: DoctorContext) -> list[TpuDevice]:
    t = edgetpu_settings(ctx.cfg)
    return enumerate_tpus(ctx.host.path(t.sysfs_root), ctx.host.path(t.dev_root))


def apex_nodes(ctx: DoctorContext) -> list[Path]:
    return sorted(ctx.host.path(edgetpu_settings(ctx.cfg).dev_root).glob("apex_*"))


def check_tpus(ctx: DoctorContext) -> CheckResult:
    found = tpus(ctx)
    listing = ", ".join(f"{d.spec} ({d.detail})" for d in found)
    data = {"devices": [{"spec": d.spec, "path": d.path, "state": d.detail} for d in found]}
    if found:
        return ok("tpu", f"{len(found)} Edge TPU(s): {listing}", **data)
    status = missing_tpu_status(ctx.cfg)
    role = "the config prefers the Edge TPU" if wants_edgetpu(ctx.cfg) else "the CPU model runs"
    return result("tpu", status, f"no Edge TPU found (no /dev/apex_*, no USB 1a6e:089a or 18d1:9302); {role}",
                  "plug the USB Accelerator into a blue USB 3 port, or for M.2/PCIe install the apex driver; "
                  "set backend.prefer = \"cpu\" if this node has none", **data)


def check_usb_link(ctx: DoctorContext) -> CheckResult:
    usb = [d for d in tpus(ctx) if d.kind == "usb"]
    if not usb:
        return ok("usb-link", "no USB Edge TPU")
    worst: Status = Status.OK
    parts, links = [], {}
    for d in usb:
        mbps = usb_speed_mbps(Path(d.path))
        links[d.spec] = mbps
        if mbps is None:
            parts.append(f"{d.spec}: speed unknown")
            worst = max(worst, Status.WARN, key=_rank)
        elif d.detail == "unprogrammed":
            # Before libedgetpu uploads the firmware the device is a boot loader; it re-enumerates after.
            parts.append(f"{d.spec}: {mbps:g} Mbit/s before firmware load (final speed shows after the first model)")
        elif mbps < USB_SUPER_SPEED_MBPS:
            parts.append(f"{d.spec}: {mbps:g} Mbit/s (USB 2: inference several times slower)")
            worst = Status.WARN
        else:
            parts.append(f"{d.spec}: {mbps:g} Mbit/s (USB 3)")
    return result("usb-link", worst, "; ".join(parts),
                  "use a USB 3 (blue) port and the USB 3 cable that came with the Coral; avoid hubs", links=links)


def _rank(s: Status) -> int:
    return [Status.OK, Status.WARN, Status.FAIL].index(s)


def check_apex_driver(ctx: DoctorContext) -> CheckResult:
    mods = loaded_modules(ctx.host)
    boards = pci_corals(ctx.host)
    nodes = apex_nodes(ctx)
    data = {"modules": mods, "pci_corals": boards, "nodes": [str(n) for n in nodes]}
    loaded = all(mods.values())
    if boards and not loaded:
        missing = ", ".join(n for n, v in mods.items() if not v)
        return fail("apex-driver", f"PCIe Coral at {', '.join(boards)} but module(s) {missing} not loaded",
                    "install the gasket/apex driver (gasket-dkms, or a rebuild for your kernel), then "
                    "`sudo modprobe apex` and reboot", **data)
    if loaded and not nodes:
        return fail("apex-driver", "gasket and apex loaded but no /dev/apex_N",
                    "check `dmesg | grep -i apex` (on a Pi 5 the PCIe link needs dtparam=pciex1 in config.txt)",
                    **data)
    if not boards and not nodes:
        return ok("apex-driver", "no PCIe/M.2 Coral on the bus; the driver is not needed", **data)
    return ok("apex-driver", f"gasket + apex loaded, {len(nodes)} device node(s)", **data)


def check_apex_permissions(ctx: DoctorContext) -> CheckResult:
    nodes = apex_nodes(ctx)
    if not nodes:
        return ok("apex-permissions", "no /dev/apex_* to check")
    acc = ctx.accounts
    user = acc.user(ctx.service_user)
    gids = acc.gids_of(user) | _unit_gids(ctx) if user else set()
    parts, bad = [], []
    for n in nodes:
        info = NodeInfo.of(n)
        group = acc.group_name(info.gid)
        parts.append(f"{n.name} {info.mode:04o} group {group}")
        if user and not info.allows(user.uid, gids, os.R_OK | os.W_OK) or not user and not info.mode & 0o060:
            bad.append(n.name)
    detail = ", ".join(parts)
    if bad:
        return fail("apex-permissions", f"{detail}: {ctx.service_user} cannot open {', '.join(bad)}",
                    f"install systemd/{SHIPPED_UDEV_RULES} (mode 0660, group plugdev) and "
                    "`sudo udevadm trigger`", bad=bad)
    return ok("apex-permissions", detail)


def _unit_gids(ctx: DoctorContext) -> set[int]:
    # The shipped unit adds SupplementaryGroups=plugdev video whatever /etc/group says.
    return {g.gid for g in ctx.accounts.groups if g.name in SERVICE_GROUPS}


def check_udev_rules(ctx: DoctorContext) -> CheckResult:
    rules = coral_udev_rules(ctx.host)
    if not rules:
        status = Status.WARN if wants_edgetpu(ctx.cfg) else Status.OK
        detail = ("no udev rule for the Coral USB ids (1a6e:089a, 18d1:9302)" if status is Status.WARN
                  else "no Coral udev rule (not needed: the config does not use the Edge TPU)")
        return result("udev", status, detail,
                      f"sudo install -m 0644 systemd/{SHIPPED_UDEV_RULES} /etc/udev/rules.d/ && "
                      "sudo udevadm control --reload && sudo udevadm trigger")
    names = ", ".join(str(r.path) for r in rules)
    return ok("udev", f"Coral rules: {names}", shipped=any(r.shipped for r in rules))


def check_groups(ctx: DoctorContext) -> CheckResult:
    acc = ctx.accounts
    user = acc.user(ctx.service_user)
    if user is None:
        return warn("groups", f"service user {ctx.service_user} does not exist (not installed as a service)",
                    "sudo systemd-sysusers systemd/edge-agent.sysusers.conf (see docs/DEPLOY.md)")
    have = acc.groups_of(user)
    want = set(SERVICE_GROUPS) | {acc.group_name(NodeInfo.of(n).gid) for n in apex_nodes(ctx)}
    missing = sorted(want - have)
    if not missing:
        return ok("groups", f"{user.name} is in {', '.join(sorted(want))}", groups=sorted(have))
    absent = [g for g in missing if all(x.name != g for x in acc.groups)]
    note = f" (group(s) {', '.join(absent)} do not exist)" if absent else ""
    return warn("groups", f"{user.name} is not in {', '.join(missing)}{note}; the shipped unit adds plugdev "
                f"and video itself", f"sudo usermod -aG {','.join(missing)} {user.name}", groups=sorted(have))
