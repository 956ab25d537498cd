"""edge-agent provision: cloud-init boot files (user-data, network-config, meta-data) for a new node."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from agent.cli import SubParsers
from agent.service.provision import RUNTIMES


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "provision",
        help="write cloud-init files that turn a freshly flashed Raspberry Pi OS card into a fleet node",
        description="Writes user-data, network-config and meta-data into BOOTDIR (the card's mounted boot "
        "partition). On first boot cloud-init installs the Edge TPU runtime pair for --os (libedgetpu rebuilt "
        "for a current TFLite, ai-edge-litert) and the agent (in a venv that sees apt's picamera2; numpy pinned), drops /etc/edge-agent/agent.toml and this node's credentials (mode 0600, root only), "
        "installs the hardened systemd unit and udev rules, and enables the service. See docs/DEPLOY.md.",
    )
    p.add_argument("--node-id", required=True, help="this node's id (topic segment: letters, digits, _ . -)")
    p.add_argument("--broker", required=True, help="broker URL as the node will reach it, e.g. mqtts://broker.lan:8883")
    p.add_argument("--out", required=True, type=Path, metavar="BOOTDIR", help="the boot partition (or any folder)")
    p.add_argument("--group", action="append", default=[], dest="groups", help="fleet group (repeatable)")
    p.add_argument("--topic-prefix", default=None, help="MQTT topic prefix (default edgefleet)")
    p.add_argument("--hostname", default=None, help="host name (default edge-NODE_ID)")
    p.add_argument("--wifi-ssid", default=None)
    p.add_argument("--wifi-psk", default=None,
                   help="WPA passphrase; written only as its hashed 256-bit PSK (use '-' to be prompted)")
    p.add_argument("--wifi-country", default="GB", help="Wi-Fi regulatory domain, two letters (default GB)")
    p.add_argument("--ca", type=Path, default=None, help="CA certificate that signed the broker's certificate")
    p.add_argument("--cert", type=Path, default=None, help="this node's TLS client certificate")
    p.add_argument("--key", type=Path, default=None, help="this node's TLS client key (stored 0600)")
    p.add_argument("--username", default=None, help="MQTT user name (the per-node ACL matches it; default: none)")
    p.add_argument("--password", default=None,
                   help="MQTT password ('-' to be prompted; or set EDGE_PROVISION_PASSWORD); stored 0600")
    p.add_argument("--trusted-key", action="append", default=[], type=Path,
                   help="public key (.pub) the node trusts for signed bundles (repeatable)")
    p.add_argument("--ssh-key", action="append", default=[], help="an authorized SSH public key line (repeatable)")
    p.add_argument("--camera", default="/dev/video0", help="camera source (default /dev/video0)")
    p.add_argument("--coral", choices=["usb", "pci", "none"], default="usb",
                   help="which Coral runtime to install: usb (libedgetpu1-std), pci (+ gasket-dkms, PCIe on, "
                   "4K-page kernel, one reboot), none")
    p.add_argument("--os", choices=sorted(RUNTIMES), default="bookworm",
                   help="Raspberry Pi OS release on the card: picks the runtime pair and numpy pin (docs/DEPLOY.md)")
    p.add_argument("--agent-spec", default="edge-fleet[agent]",
                   help="what pip installs on the node (a requirement or a wheel URL)")
    p.add_argument("--timezone", default=None, help="e.g. Europe/London")
    p.add_argument("--force", action="store_true", help="overwrite existing cloud-init files in BOOTDIR")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from agent.protocol.topics import DEFAULT_PREFIX
    from agent.service.provision import ProvisionError, ProvisionSpec, write_boot_files

    password = args.password if args.password is not None else os.environ.get("EDGE_PROVISION_PASSWORD")
    if password == "-":
        password = getpass.getpass("MQTT password: ")
    psk = args.wifi_psk
    if psk == "-":
        psk = getpass.getpass(f"Wi-Fi passphrase for {args.wifi_ssid}: ")
    spec = ProvisionSpec(
        node_id=args.node_id, broker=args.broker, groups=args.groups,
        topic_prefix=args.topic_prefix or DEFAULT_PREFIX, hostname=args.hostname,
        wifi_ssid=args.wifi_ssid, wifi_psk=psk, wifi_country=args.wifi_country,
        ca=args.ca, cert=args.cert, key=args.key, username=args.username, password=password,
        trusted_keys=args.trusted_key, ssh_authorized_keys=args.ssh_key, agent_spec=args.agent_spec,
        coral=args.coral, os=args.os, camera=args.camera, timezone=args.timezone,
    )
    try:
        written = write_boot_files(spec, args.out, force=args.force)
    except (ProvisionError, ValueError, OSError) as exc:
        print(f"edge-agent provision: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(f"node {spec.node_id}: insert the card and boot; the service starts once cloud-init finishes "
          f"(follow with: journalctl -u edge-agent -f)")
    if spec.password is not None or spec.key is not None:
        print("the card's user-data holds this node's secrets until its first boot, which moves them to "
              "/etc/edge-agent/credentials and shreds them from the boot partition: keep the card safe until then")
    return 0
