"""Shared fixtures: real Mosquitto brokers, a real loopback HTTP server, Coral test data, a trained bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import skip_policy
from helpers import CORAL_DATA, ROOT

from builder.fleet.devservices import FileServer, LocalBroker, find_mosquitto

BUNDLE_CACHE = Path(os.environ.get("EDGE_TEST_CACHE", ROOT / ".cache" / "test-bundle"))
ARTIFACTS = ROOT / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("skip_policy"):
        config.pluginmanager.register(skip_policy, "skip_policy")


def _need_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto mosquitto-clients)")


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A plain, anonymous Mosquitto on a free loopback port."""
    _need_mosquitto()
    broker = LocalBroker(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[object]:
    """Build brokers with options: broker_factory(users={...}, acl='...', tls=True, websockets=True)."""
    _need_mosquitto()
    made: list[LocalBroker] = []

    def make(**kw: object) -> LocalBroker:
        b = LocalBroker(tmp_path / f"mosquitto-{len(made)}", **kw).start()  # type: ignore[arg-type]
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[FileServer]:
    """A real HTTP server on loopback serving `.root` (Range honoured; `.faults[path]` injects errors)."""
    server = FileServer(tmp_path / "www").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def coral_data() -> Path:
    """Google's Coral test models and photos, vendored in tests/data/coral (CORAL_TEST_DATA overrides)."""
    if not (CORAL_DATA / "mobilenet_v1_0.25_128_quant.tflite").exists():
        pytest.skip(f"Coral test data not found at {CORAL_DATA}")
    return CORAL_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def _builder_stack_available() -> bool:
    try:
        import libreyolo  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def trained_bundle_dir() -> Path:
    """A real bundle trained and converted by the builder on the synthetic 3-class dataset, signed.

    Built once (tests/fixtures/build_test_bundle.py, about a few minutes on 2 cores) and cached under
    .cache/test-bundle keyed by the builder's source. The agent-only venv reuses the cache or skips.
    """
    pinned = os.environ.get("EDGE_TEST_BUNDLE_DIR")  # development only: reuse one build while refactoring
    if pinned:
        return Path(pinned)
    script = ROOT / "tests" / "fixtures" / "build_test_bundle.py"
    key = subprocess.run([sys.executable, str(script), "--print-key"], capture_output=True, text=True,
                         check=True).stdout.strip()
    out = BUNDLE_CACHE / key
    if (out / "ok").exists():
        return out
    if not _builder_stack_available():
        pytest.skip("no cached test bundle and no builder stack in this venv (run the 3.12 suite first)")
    proc = subprocess.run([sys.executable, str(script), "--ensure", str(BUNDLE_CACHE)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the test bundle failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def trained_bundle(trained_bundle_dir: Path) -> Path:
    """The signed bundle directory (manifest.json, manifest.sig, model files)."""
    return trained_bundle_dir / "bundle"


@pytest.fixture(scope="session")
def trained_bundle_key(trained_bundle_dir: Path) -> Path:
    """Private key that signed `trained_bundle` (for re-signing modified copies)."""
    return trained_bundle_dir / "keys" / "fleet.key"


@pytest.fixture(scope="session")
def trained_bundle_keys(trained_bundle_dir: Path) -> Path:
    """Directory holding only the pinned public key (what a node trusts)."""
    return trained_bundle_dir / "trusted"


@pytest.fixture(scope="session")
def synth_dataset(trained_bundle_dir: Path) -> Path:
    """The synthetic dataset the trained bundle learned from (its val split is unseen)."""
    return trained_bundle_dir / "dataset"


@pytest.fixture
def bundle_copy(trained_bundle: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the trained bundle."""
    dst = tmp_path / "bundle"
    shutil.copytree(trained_bundle, dst)
    return dst
