"""edge-agent provision: the cloud-init files parse, pass `cloud-init schema`, and carry what a node needs."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.cli import main as cli_main
from agent.service.provision import ProvisionError, ProvisionSpec, to_yaml, wpa_psk, write_boot_files

try:
    import yaml
except ImportError:  # the agent-only venv has no PyYAML; the builder venv runs these
    yaml = None  # type: ignore[assignment]

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML not installed")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    from builder.fleet.testpki import make_test_pki

    files = make_test_pki(tmp_path / "pki", ("server", "cam-7"))
    return {"ca": files["server"].ca, "cert": files["cam-7"].cert, "key": files["cam-7"].key}


def _run(argv: list[str]) -> int:
    return cli_main(["provision", *argv])


def test_wpa_psk_matches_ieee_802_11i_test_vector() -> None:
    # IEEE 802.11i-2004 Annex H.4 test vector: passphrase "password", SSID "IEEE"
    assert wpa_psk("IEEE", "password") == "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"


@needs_yaml
def test_yaml_writer_round_trips_awkward_values() -> None:
    data = {"a": "x: y # not a comment", "b": ["- dash", "", "multi\nline\n", " lead\n", "tab\tin\n"],
            "c": {"n": 1, "f": 0.5, "t": True, "z": None, "e": [], "d": {}}, "weird key!": "é ✓ \"q\" \\"}
    assert yaml.safe_load(to_yaml(data)) == data


@needs_yaml
def test_generated_files_full_node(tmp_path: Path, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    pub = tmp_path / "fleet.pub"
    pub.write_text("ed25519 test-key\n")
    rc = _run(["--node-id", "cam-7", "--broker", "mqtts://broker.lan:8883", "--group", "yard",
               "--wifi-ssid", "Farm Net", "--wifi-psk", "correct horse battery", "--wifi-country", "DE",
               "--ca", str(pki["ca"]), "--cert", str(pki["cert"]), "--key", str(pki["key"]),
               "--username", "cam-7", "--password", "pw-for-cam-7", "--trusted-key", str(pub),
               "--ssh-key", "ssh-ed25519 AAAAC3Nza test@host", "--out", str(boot)])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in boot.iterdir()) == ["meta-data", "network-config", "user-data"]

    raw = (boot / "user-data").read_text()
    assert raw.startswith("#cloud-config\n")
    ud = yaml.safe_load(raw)
    files = {f["path"]: f for f in ud["write_files"]}
    # per-node credentials: root-only 0600, and the service gets them only through LoadCredential
    for secret in ("/etc/edge-agent/credentials/mqtt-password", "/etc/edge-agent/credentials/client.key"):
        assert files[secret]["permissions"] == "0600" and files[secret]["owner"] == "root:root"
    assert files["/etc/edge-agent/credentials/mqtt-password"]["content"] == "pw-for-cam-7\n"
    assert files["/etc/edge-agent/credentials/client.key"]["content"] == pki["key"].read_text()
    assert "PRIVATE KEY" not in "".join(f["content"] for p, f in files.items() if "credentials" not in p)
    assert files["/etc/edge-agent/keys/fleet.pub"]["content"] == "ed25519 test-key\n"
    unit = files["/etc/systemd/system/edge-agent.service"]["content"]
    assert "LoadCredential=creds:/etc/edge-agent/credentials" in unit
    assert "/etc/apt/sources.list.d/coral-edgetpu.list" not in files  # libedgetpu from its .deb, not Google's repo
    assert "18d1" in files["/etc/udev/rules.d/99-edge-agent-coral.rules"]["content"]
    cmds = [" ".join(c) if isinstance(c, list) else c for c in ud["runcmd"]]
    assert any("libedgetpu1-std" in c for c in cmds)
    assert any(c.endswith("pip install -c /etc/edge-agent/pip-constraints.txt edge-fleet[agent]") for c in cmds)
    assert cmds[-1] == "systemctl enable --now --no-block edge-agent.service"  # READY may wait for a model
    assert ud["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza test@host"] and ud["ssh_pwauth"] is False

    # the agent config it drops is valid for the agent and points at the systemd credentials
    from agent.config import load_config

    toml = tmp_path / "agent.toml"
    toml.write_text(files["/etc/edge-agent/agent.toml"]["content"])
    cfg = load_config(toml)
    assert cfg.node_id == "cam-7" and cfg.groups == ["yard"] and cfg.broker.tls
    assert str(cfg.broker.password_file) == "/run/credentials/edge-agent.service/creds_mqtt-password"
    assert str(cfg.broker.key_file) == "/run/credentials/edge-agent.service/creds_client.key"
    assert cfg.broker.username == "cam-7" and cfg.broker.password is None

    net = yaml.safe_load((boot / "network-config").read_text())["network"]
    assert net["version"] == 2
    ap = net["wifis"]["wlan0"]["access-points"]["Farm Net"]
    assert ap["password"] == wpa_psk("Farm Net", "correct horse battery")
    assert "correct horse battery" not in (boot / "network-config").read_text()  # only the hashed PSK
    assert net["wifis"]["wlan0"]["regulatory-domain"] == "DE"
    md = yaml.safe_load((boot / "meta-data").read_text())
    assert md["local-hostname"] == "edge-cam-7" and md["instance-id"].startswith("edge-cam-7-")


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init not installed")
@pytest.mark.parametrize("variant", ["full", "minimal", "cpu-only"])
def test_cloud_init_schema_accepts_user_data(tmp_path: Path, pki: dict[str, Path], variant: str) -> None:
    args = {"full": ["--wifi-ssid", "n", "--wifi-psk", "12345678", "--ca", str(pki["ca"]), "--cert", str(pki["cert"]),
                     "--key", str(pki["key"]), "--username", "n1", "--password", "p", "--ssh-key", "ssh-ed25519 A x",
                     "--timezone", "Europe/London", "--coral", "pci"],
            "minimal": [], "cpu-only": ["--coral", "none"]}[variant]
    broker = "mqtt://10.0.0.2:1883" if variant != "full" else "mqtts://broker.lan:8883"
    assert _run(["--node-id", "n1", "--broker", broker, "--out", str(tmp_path), *args]) == 0
    proc = subprocess.run(["cloud-init", "schema", "--config-file", str(tmp_path / "user-data")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--node-id", "bad/id"], "node id"),
        (["--broker", "http://x"], "--broker"),
        (["--broker", "mqtt://127.0.0.1:1883"], "localhost"),
        (["--wifi-ssid", "x"], "go together"),
        (["--wifi-ssid", "x", "--wifi-psk", "short"], "8..63"),
        (["--wifi-country", "england", "--wifi-ssid", "x", "--wifi-psk", "12345678"], "two-letter"),
        (["--username", "u", "--password", "p"], "unencrypted"),
        (["--password", "p"], "needs --username"),
        (["--ca", "/nonexistent/ca.crt"], "no such file"),
    ],
)
def test_bad_input_clear_error_and_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], message: str) -> None:
    base = {"--node-id": "n1", "--broker": "mqtt://10.0.0.2:1883"}
    for k in list(base):
        if k in argv:
            base.pop(k)
    full = [x for kv in base.items() for x in kv] + argv + ["--out", str(tmp_path)]
    assert _run(full) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    spec = ProvisionSpec(node_id="n1", broker="mqtt://10.0.0.2:1883")
    write_boot_files(spec, tmp_path)
    with pytest.raises(ProvisionError, match="--force"):
        write_boot_files(spec, tmp_path)
    first = (tmp_path / "meta-data").read_text()
    write_boot_files(spec, tmp_path, force=True)
    assert stat.S_ISREG((tmp_path / "user-data").stat().st_mode)
    assert (tmp_path / "meta-data").read_text() != first  # a fresh instance-id: cloud-init runs again


@needs_yaml
def test_first_boot_removes_secrets_from_the_boot_partition(tmp_path: Path, pki: dict[str, Path]) -> None:
    """The runcmd step, run for real with its paths moved into tmp: it scrubs the boot partition's user-data
    only once the secrets are installed under /etc/edge-agent/credentials, and what it leaves is still a
    valid, secret-free cloud-config."""
    from agent.service.provision import BOOT_DIRS, CRED_DIR, SCRUBBED_USER_DATA

    boot = tmp_path / "boot-firmware"
    boot.mkdir()
    assert _run(["--node-id", "cam-7", "--broker", "mqtts://broker.lan:8883", "--username", "cam-7",
                 "--password", "pw-for-cam-7", "--key", str(pki["key"]), "--cert", str(pki["cert"]),
                 "--out", str(boot)]) == 0
    ud = yaml.safe_load((boot / "user-data").read_text())
    key_text = pki["key"].read_text()
    assert "pw-for-cam-7" in (boot / "user-data").read_text()
    writes = [f["path"] for f in ud["write_files"]]
    assert f"{CRED_DIR}/mqtt-password" in writes and f"{CRED_DIR}/client.key" in writes
    scrub = [c for c in ud["runcmd"] if c[0] == "env"]
    assert len(scrub) == 1
    venv_at = next(i for i, c in enumerate(ud["runcmd"]) if c[:3] == ["python3", "-m", "venv"])
    assert ud["runcmd"].index(scrub[0]) < venv_at  # before anything slow that could fail first
    creds = tmp_path / "creds"
    env_arg, script = scrub[0][1], scrub[0][-1]
    script = script.replace(CRED_DIR, str(creds)).replace(" ".join(BOOT_DIRS), f"{boot} {tmp_path / 'nothing'}")
    run = [*scrub[0][:1], env_arg, *scrub[0][2:-1], script]

    creds.mkdir()
    (creds / "mqtt-password").write_text("pw-for-cam-7\n")  # the key is not installed yet: keep everything
    assert subprocess.run(run, capture_output=True, text=True, timeout=30).returncode == 0
    assert "pw-for-cam-7" in (boot / "user-data").read_text()

    (creds / "client.key").write_text(key_text)
    proc = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    left = (boot / "user-data").read_text()
    assert left == SCRUBBED_USER_DATA
    assert "pw-for-cam-7" not in left and "PRIVATE KEY" not in left
    assert sorted(p.name for p in boot.iterdir()) == ["meta-data", "network-config", "user-data"]
    if shutil.which("cloud-init"):
        proc = subprocess.run(["cloud-init", "schema", "--config-file", str(boot / "user-data")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_scrub_step_without_secrets(tmp_path: Path) -> None:
    from agent.service.provision import scrub_boot_secrets_cmd

    assert scrub_boot_secrets_cmd(ProvisionSpec(node_id="n1", broker="mqtt://10.0.0.2:1883")) is None


@needs_yaml
@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init not installed")
@pytest.mark.parametrize("os_name", ["bookworm", "trixie"])
@pytest.mark.parametrize("coral", ["usb", "pci"])
def test_runtime_pair_per_os(tmp_path: Path, os_name: str, coral: str) -> None:
    """--os picks the documented pair (docs/DEPLOY.md "Runtime matrix"): the libedgetpu .deb, the pinned
    ai-edge-litert, a venv that sees apt's picamera2, and the numpy pin of that OS's python3-numpy ABI."""
    from agent.service.provision import PCIE_CONFIG_LINES, RUNTIMES

    assert _run(["--node-id", "n1", "--broker", "mqtt://10.0.0.2:1883", "--os", os_name, "--coral", coral,
                 "--out", str(tmp_path)]) == 0
    proc = subprocess.run(["cloud-init", "schema", "--config-file", str(tmp_path / "user-data")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr
    ud = yaml.safe_load((tmp_path / "user-data").read_text())
    rt = RUNTIMES[os_name]
    cmds = [" ".join(c) for c in ud["runcmd"]]
    deb = rt.libedgetpu_url()
    assert "feranick/libedgetpu" in deb and "libedgetpu1-std_16.0tf2.18.1" in deb and deb.endswith("_arm64.deb")
    assert f"curl -fsSL -o /var/tmp/libedgetpu.deb {deb}" in cmds
    assert "apt-get install -y --no-install-recommends /var/tmp/libedgetpu.deb" in cmds
    assert "python3 -m venv --system-site-packages /opt/edge-agent/venv" in cmds
    pip = next(c for c in cmds if c.endswith("pip install -c /etc/edge-agent/pip-constraints.txt edge-fleet[agent]"))
    assert cmds.index(pip) > cmds.index("python3 -m venv --system-site-packages /opt/edge-agent/venv")
    files = {f["path"]: f["content"] for f in ud["write_files"]}
    constraints = files["/etc/edge-agent/pip-constraints.txt"].splitlines()
    assert constraints == [rt.numpy, "ai-edge-litert==2.1.2"]
    assert rt.numpy == {"bookworm": "numpy>=1.26,<2", "trixie": "numpy>=2,<3"}[os_name]
    assert rt.python == {"bookworm": "3.11", "trixie": "3.13"}[os_name]
    assert "python3-picamera2" in ud["packages"] and "python3-numpy" in ud["packages"]
    pcie = [c for c in cmds if "/boot/firmware/config.txt" in c]
    if coral == "pci":
        assert "apt-get install -y --no-install-recommends /var/tmp/gasket-dkms.deb" in cmds
        assert any("feranick/gasket-driver" in c for c in cmds) and "linux-headers-rpi-v8" in " ".join(cmds)
        assert len(pcie) == 1 and all(line in pcie[0] for line in PCIE_CONFIG_LINES)
        assert ud["power_state"]["mode"] == "reboot"
    else:
        assert not pcie and "power_state" not in ud and not any("gasket" in c for c in cmds)


def test_os_option_rejects_unknown_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run(["--node-id", "n1", "--broker", "mqtt://10.0.0.2:1883", "--os", "bullseye", "--out", str(tmp_path)])
    assert "--os" in capsys.readouterr().err
    with pytest.raises(ProvisionError, match="--os"):
        ProvisionSpec(node_id="n1", broker="mqtt://10.0.0.2:1883", os="bullseye").validate()
