"""cloud-init files that turn a freshly flashed Raspberry Pi OS card into a fleet node (docs/DEPLOY.md).

Raspberry Pi OS images that boot with cloud-init read `user-data`, `network-config` and `meta-data` from
the boot (FAT) partition (NoCloud datasource). We write those three files:

- `meta-data`: instance id (new per provisioning run, so cloud-init runs again on a re-flashed card), hostname.
- `network-config`: netplan v2; Wi-Fi with the WPA passphrase already hashed into its 256-bit PSK, so the
  plain passphrase never sits on the FAT partition.
- `user-data` (#cloud-config): installs the Edge TPU runtime pair for the OS (RUNTIMES, docs/DEPLOY.md "Runtime
  matrix"), creates the `edge-agent` user, installs the agent into /opt/edge-agent/venv (with the system's site
  packages, so apt's picamera2 imports; numpy pinned to its ABI), writes /etc/edge-agent/agent.toml,
  the per-node credentials (mode 0600, root only: systemd passes them to the service with LoadCredential=),
  the hardened unit and the udev rules, and enables the service.

Pure stdlib (YAML is emitted by a tiny writer below, then checked by `cloud-init schema` in the tests).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.protocol.topics import DEFAULT_PREFIX, check_segment

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "systemd"
#: the PCIe (apex) driver: Google's gasket-dkms 1.0-18 no longer builds on Pi OS's 6.12 kernels; this fork does
GASKET_DKMS = "https://github.com/feranick/gasket-driver/releases/download/1.0-18.4/gasket-dkms_1.0-18.4_all.deb"
CRED_DIR = "/etc/edge-agent/credentials"
#: where Raspberry Pi OS mounts the FAT boot partition that holds the NoCloud seed (Bookworm, then older)
BOOT_DIRS = ("/boot/firmware", "/boot")
SCRUBBED_USER_DATA = ("#cloud-config\n# edge-agent: the per-node secrets this file carried were removed after first boot;\n"
                      f"# they live in {CRED_DIR} (root only). Re-provision the card to change them.\n{{}}\n")
#: where systemd exposes LoadCredential=creds:/etc/edge-agent/credentials to the service
RUN_CRED = "/run/credentials/edge-agent.service/creds_"


class ProvisionError(Exception):
    """Bad provisioning input; the message says which option."""


@dataclass(frozen=True)
class RuntimePair:
    """One OS's Edge TPU runtime pair and apt picamera2's numpy ABI (docs/DEPLOY.md "Runtime matrix": from
    sources, not run on a Pi)."""
    python: str
    litert: str  # the pip requirement of the TFLite runtime
    libedgetpu: str  # .deb URL; {clock} is std or max
    numpy: str  # the pin, matching the ABI of the OS's python3-numpy

    def libedgetpu_url(self, clock: str = "std") -> str:
        return self.libedgetpu.format(clock=clock)
#: feranick's libedgetpu rebuilt against TF 2.18.1 (Google's 16.0 deb is built against TF 2.5-era TFLite and
#: segfaults under newer runtimes); one arm64 bookworm build, which Trixie's libc6/libusb also satisfy.
FERANICK_LIBEDGETPU = ("https://github.com/feranick/libedgetpu/releases/download/v16.0TF2.18.1-1/"
                       "libedgetpu1-{clock}_16.0tf2.18.1-1.bookworm_arm64.deb")
RUNTIMES = {"bookworm": RuntimePair("3.11", "ai-edge-litert==2.1.2", FERANICK_LIBEDGETPU, "numpy>=1.26,<2"),
            "trixie": RuntimePair("3.13", "ai-edge-litert==2.1.2", FERANICK_LIBEDGETPU, "numpy>=2,<3")}
#: Pi 5 M.2/PCIe: enable the PCIe connector and boot the 4K-page kernel (apex/libedgetpu need 4K pages)
PCIE_CONFIG_LINES = ("dtparam=pciex1", "kernel=kernel8.img")
VENV = "/opt/edge-agent/venv"


@dataclass
class ProvisionSpec:
    node_id: str
    broker: str
    groups: list[str] = field(default_factory=list)
    topic_prefix: str = DEFAULT_PREFIX
    hostname: str | None = None
    wifi_ssid: str | None = None
    wifi_psk: str | None = None
    wifi_country: str = "GB"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    trusted_keys: list[Path] = field(default_factory=list)
    ssh_authorized_keys: list[str] = field(default_factory=list)
    agent_spec: str = "edge-fleet[agent]"
    coral: str = "usb"  # usb | pci | none
    os: str = "bookworm"  # a RUNTIMES key
    camera: str = "/dev/video0"
    timezone: str | None = None

    def validate(self) -> None:
        check_segment(self.node_id, "node id")
        for g in self.groups:
            check_segment(g, "group")
        for part in self.topic_prefix.split("/"):
            check_segment(part, "topic prefix")
        u = urlparse(self.broker)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl", "ws", "wss") or not u.hostname:
            raise ProvisionError(f"--broker must look like mqtts://host:8883 or mqtt://host:1883, not {self.broker!r}")
        if u.hostname in ("127.0.0.1", "localhost", "::1"):
            raise ProvisionError("--broker points at localhost: a node would talk to itself; give the broker's address")
        if (self.wifi_ssid is None) != (self.wifi_psk is None):
            raise ProvisionError("--wifi-ssid and --wifi-psk go together")
        if self.wifi_psk is not None and not (8 <= len(self.wifi_psk) <= 63 or _is_hex_psk(self.wifi_psk)):
            raise ProvisionError("--wifi-psk must be a WPA passphrase of 8..63 characters (or a 64-hex-digit PSK)")
        if self.wifi_ssid is not None and not (1 <= len(self.wifi_ssid.encode()) <= 32):
            raise ProvisionError("--wifi-ssid must be 1..32 bytes")
        if not re.fullmatch(r"[A-Z]{2}", self.wifi_country):
            raise ProvisionError("--wifi-country must be a two-letter ISO 3166 code, e.g. GB, US, DE")
        if (self.cert is None) != (self.key is None):
            raise ProvisionError("--cert and --key go together (the node's TLS client certificate)")
        for name, p in (("--ca", self.ca), ("--cert", self.cert), ("--key", self.key), *(
                ("--trusted-key", k) for k in self.trusted_keys)):
            if p is not None and not Path(p).is_file():
                raise ProvisionError(f"{name} {p}: no such file")
        if self.password is not None and self.username is None:
            raise ProvisionError("--password needs --username")
        if u.scheme in ("mqtt", "tcp", "ws") and (self.password or self.key):
            raise ProvisionError("credentials over an unencrypted broker URL: use mqtts:// (or wss://)")
        if self.coral not in ("usb", "pci", "none"):
            raise ProvisionError("--coral must be usb, pci or none")
        if self.os not in RUNTIMES:
            raise ProvisionError(f"--os must be one of {', '.join(RUNTIMES)}")
        host = self.hostname or f"edge-{self.node_id}"
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", host):
            raise ProvisionError(f"hostname {host!r} is not a valid host name (letters, digits, '-')")


def _is_hex_psk(s: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F]{64}", s))


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The 256-bit WPA PSK, as wpa_passphrase computes it: PBKDF2-HMAC-SHA1(passphrase, ssid, 4096)."""
    if _is_hex_psk(passphrase):
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


# ------------------------------------------------------------------------------------------ tiny YAML
def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def _block_ok(s: str) -> bool:
    return (s.endswith("\n") and not s.endswith("\n\n") and "\t" not in s and not s.startswith((" ", "\n"))
            and all(ch == "\n" or ch >= " " for ch in s))


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts/lists/scalars; multi-line strings as literal blocks where safe."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        for k, v in obj.items():
            key = _scalar(k) if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(k)) else str(k)
            lines.append(_entry(f"{pad}{key}:", v, indent))
    elif isinstance(obj, list):
        if not obj:
            return pad + "[]\n"
        for v in obj:
            if isinstance(v, dict) and v:
                first, *rest = to_yaml(v, indent + 2).splitlines(keepends=True)
                lines.append(f"{pad}- {first.lstrip()}" + "".join(rest))
            else:
                lines.append(_entry(f"{pad}-", v, indent))
    else:
        return pad + _scalar(obj) + "\n"
    return "".join(lines)


def _entry(head: str, v: Any, indent: int) -> str:
    if isinstance(v, dict | list) and v:
        return head + "\n" + to_yaml(v, indent + 2)
    if isinstance(v, dict | list):
        return f"{head} {'{}' if isinstance(v, dict) else '[]'}\n"
    if isinstance(v, str) and "\n" in v and _block_ok(v):
        body = "".join((" " * (indent + 2) + ln if ln else "") + "\n" for ln in v[:-1].split("\n"))
        return f"{head} |\n{body}"
    return f"{head} {_scalar(v)}\n"


# ------------------------------------------------------------------------------------------ contents
def _toml_str(s: str) -> str:
    return json.dumps(s)  # TOML basic strings share JSON's escapes for what we emit


def agent_toml(spec: ProvisionSpec) -> str:
    tls = urlparse(spec.broker).scheme in ("mqtts", "ssl", "wss")
    lines = [
        "# written by `edge-agent provision`; see docs/agent.example.toml for every key",
        f"node_id = {_toml_str(spec.node_id)}",
        f"groups = [{', '.join(_toml_str(g) for g in spec.groups)}]",
        f"topic_prefix = {_toml_str(spec.topic_prefix)}",
        'state_dir = "/var/lib/edge-agent"',
        'trusted_keys_dir = "/etc/edge-agent/keys"',
        "",
        "[broker]",
        f"url = {_toml_str(spec.broker)}",
        f"client_id = {_toml_str('edge-agent-' + spec.node_id)}",
    ]
    if spec.username:
        lines.append(f"username = {_toml_str(spec.username)}")
    if spec.password is not None:
        lines.append(f"password_file = {_toml_str(RUN_CRED + 'mqtt-password')}")
    if spec.ca:
        lines.append('ca_file = "/etc/edge-agent/tls/ca.crt"')
    if spec.cert:
        lines += ['cert_file = "/etc/edge-agent/tls/client.crt"', f"key_file = {_toml_str(RUN_CRED + 'client.key')}"]
    if not tls:
        lines.append("# plain MQTT: use mqtts:// with a CA on any network you do not fully trust")
    lines += ["", "[camera]", f"source = {_toml_str(spec.camera)}", "", "[backend]",
              f'prefer = "{"cpu" if spec.coral == "none" else "edgetpu"}"', "", "[telemetry]", "interval_s = 10.0",
              "hass_discovery = true", ""]
    return "\n".join(lines)


def _file(path: str, content: str, permissions: str = "0644", owner: str = "root:root", defer: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {"path": path, "content": content, "owner": owner, "permissions": permissions}
    if defer:
        d["defer"] = True
    return d


def _systemd_file(name: str) -> str:
    path = SYSTEMD_DIR / name
    if not path.is_file():
        raise ProvisionError(f"{path} not found: run `edge-agent provision` from a checkout of the project")
    return path.read_text()


def _write_files(spec: ProvisionSpec) -> list[dict[str, Any]]:
    """The service's unit, udev rule and user, its config, and the node's secrets/keys (cloud-init write_files)."""
    unit, rules, sysusers = (_systemd_file(n) for n in (
        "edge-agent.service", "99-edge-agent-coral.rules", "edge-agent.sysusers.conf"))
    rt = RUNTIMES[spec.os]
    files = [
        _file("/etc/sysusers.d/edge-agent.conf", sysusers),
        _file("/etc/udev/rules.d/99-edge-agent-coral.rules", rules),
        _file("/etc/systemd/system/edge-agent.service", unit),
        _file("/etc/edge-agent/agent.toml", agent_toml(spec), "0644"),
        # pip may never replace apt's numpy with one of another ABI (picamera2/simplejpeg would not import)
        _file("/etc/edge-agent/pip-constraints.txt", f"{rt.numpy}\n{rt.litert}\n"),
    ]
    # Per-node secrets: root-only; the service reads them through systemd credentials, never directly.
    if spec.password is not None:
        files.append(_file(f"{CRED_DIR}/mqtt-password", spec.password + "\n", "0600"))
    if spec.key is not None:
        files.append(_file(f"{CRED_DIR}/client.key", Path(spec.key).read_text(), "0600"))
    if spec.cert is not None:
        files.append(_file("/etc/edge-agent/tls/client.crt", Path(spec.cert).read_text(), "0644"))
    if spec.ca is not None:
        files.append(_file("/etc/edge-agent/tls/ca.crt", Path(spec.ca).read_text(), "0644"))
    for k in spec.trusted_keys:
        files.append(_file(f"/etc/edge-agent/keys/{Path(k).name}", Path(k).read_text(), "0644"))
    return files


def _coral_cmds(spec: ProvisionSpec) -> list[Any]:
    """libedgetpu from its .deb; for PCIe also gasket-dkms (DKMS, 4K-page kernel headers) and the Pi 5 settings."""
    cmds: list[Any] = [] if spec.coral == "none" else [
        ["curl", "-fsSL", "-o", "/var/tmp/libedgetpu.deb", RUNTIMES[spec.os].libedgetpu_url()],
        ["apt-get", "install", "-y", "--no-install-recommends", "/var/tmp/libedgetpu.deb"],
    ]
    if spec.coral == "pci":
        lines = " ".join(PCIE_CONFIG_LINES)
        cmds += [
            ["apt-get", "install", "-y", "--no-install-recommends", "dkms", "linux-headers-rpi-v8"],
            ["curl", "-fsSL", "-o", "/var/tmp/gasket-dkms.deb", GASKET_DKMS],
            ["apt-get", "install", "-y", "--no-install-recommends", "/var/tmp/gasket-dkms.deb"],
            ["sh", "-c", f"for l in {lines}; do grep -qxF \"$l\" /boot/firmware/config.txt || "
                         "echo \"$l\" >> /boot/firmware/config.txt; done"],
        ]
    return cmds


def _runcmd(spec: ProvisionSpec) -> list[Any]:
    """First-boot commands: user, udev, the Coral runtime (if any), the agent's venv, then start the service."""
    runcmd: list[Any] = [
        # LoadCredential= needs the directory even when empty; root-only like the files in it
        ["install", "-d", "-m", "0700", CRED_DIR],
        ["systemd-sysusers"],
        ["udevadm", "control", "--reload"],
        ["udevadm", "trigger", "--subsystem-match=usb", "--subsystem-match=apex"],
    ]
    runcmd += _coral_cmds(spec)
    scrub = scrub_boot_secrets_cmd(spec)
    if scrub is not None:
        runcmd.append(scrub)
    runcmd += [
        # --system-site-packages: apt's picamera2 (and the numpy it was built against) import in the venv
        ["python3", "-m", "venv", "--system-site-packages", VENV],
        [f"{VENV}/bin/pip", "install", "--upgrade", "pip"],
        [f"{VENV}/bin/pip", "install", "-c", "/etc/edge-agent/pip-constraints.txt", spec.agent_spec],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "--no-block", "edge-agent.service"],
    ]
    return runcmd


def secret_files(spec: ProvisionSpec) -> list[str]:
    """The secrets `user-data` carries (installed root-only by write_files before runcmd runs)."""
    return [f"{CRED_DIR}/{n}" for n, v in (("mqtt-password", spec.password), ("client.key", spec.key)) if v is not None]


def scrub_boot_secrets_cmd(spec: ProvisionSpec) -> list[str] | None:
    """First boot: once every secret is installed under CRED_DIR (non-empty), shred the boot partition's
    user-data (the FAT partition is readable by anyone holding the card) and leave a secret-free one in its
    place, so cloud-init still finds its seed; meta-data keeps the instance id, so nothing runs again.
    Never scrubs before the secrets are safe: a node must not lose its only copy."""
    files = secret_files(spec)
    if not files:
        return None
    installed = " && ".join(f"test -s {f}" for f in files)
    script = (
        f"{installed} || {{ echo 'edge-agent: secrets not installed; boot user-data kept' >&2; exit 0; }}; "
        f"for d in {' '.join(BOOT_DIRS)}; do f=\"$d/user-data\"; [ -f \"$f\" ] || continue; "
        "shred -u -z \"$f\" 2>/dev/null || rm -f \"$f\"; "
        "printf '%s' \"$SCRUBBED\" > \"$f.tmp\" && mv \"$f.tmp\" \"$f\"; done; sync"
    )
    return ["env", f"SCRUBBED={SCRUBBED_USER_DATA}", "sh", "-c", script]


def user_data(spec: ProvisionSpec) -> dict[str, Any]:
    ud: dict[str, Any] = {
        "hostname": spec.hostname or f"edge-{spec.node_id}",
        "manage_etc_hosts": True,
        "package_update": True,
        "packages": ["python3-venv", "python3-pip", "python3-numpy", "python3-picamera2", "ca-certificates", "curl"],
        "write_files": _write_files(spec),
        "runcmd": _runcmd(spec),
        "final_message": f"edge-agent node {spec.node_id} provisioned after $UPTIME s",
    }
    if spec.coral == "pci":  # the PCIe connector and the 4K-page kernel take effect after a reboot
        ud["power_state"] = {"mode": "reboot", "message": "edge-agent: reboot for PCIe + 4K-page kernel"}
    if spec.timezone:
        ud["timezone"] = spec.timezone
    if spec.ssh_authorized_keys:
        ud["ssh_authorized_keys"] = list(spec.ssh_authorized_keys)
        ud["ssh_pwauth"] = False
    return ud


def network_config(spec: ProvisionSpec) -> dict[str, Any]:
    net: dict[str, Any] = {"version": 2, "ethernets": {"eth0": {"dhcp4": True, "optional": True}}}
    if spec.wifi_ssid is not None and spec.wifi_psk is not None:
        net["wifis"] = {"wlan0": {
            "dhcp4": True,
            "optional": True,
            "regulatory-domain": spec.wifi_country,
            "access-points": {spec.wifi_ssid: {"password": wpa_psk(spec.wifi_ssid, spec.wifi_psk)}},
        }}
    return {"network": net}


def meta_data(spec: ProvisionSpec) -> dict[str, Any]:
    # a fresh instance id makes cloud-init treat a re-provisioned card as a new instance and run again
    return {"instance-id": f"edge-{spec.node_id}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}",
            "local-hostname": spec.hostname or f"edge-{spec.node_id}"}


def write_boot_files(spec: ProvisionSpec, out: Path, force: bool = False) -> list[Path]:
    """Validate, then write user-data, network-config and meta-data into `out` (the boot partition)."""
    spec.validate()
    out = Path(out)
    if not out.is_dir():
        raise ProvisionError(f"--out {out}: not a directory (mount the card's boot partition and point here)")
    names = ("user-data", "network-config", "meta-data")
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise ProvisionError(f"{out} already has {', '.join(existing)}; pass --force to overwrite")
    contents = {
        "user-data": "#cloud-config\n" + to_yaml(user_data(spec)),
        "network-config": to_yaml(network_config(spec)),
        "meta-data": to_yaml(meta_data(spec)),
    }
    written = []
    for name in names:
        tmp = out / f".{name}.tmp"
        tmp.write_text(contents[name])
        tmp.replace(out / name)  # never a half-written file on the card
        written.append(out / name)
    return written
