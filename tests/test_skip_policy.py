"""The skip policy (tests/skip_policy.py): which skips CI refuses, judged on the suite's own skip reasons,
and a real pytest run that skips for a missing prerequisite failing under EDGE_STRICT_SKIPS=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from skip_policy import skip_allowed

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("reason", [
    "mosquitto not installed (apt-get install mosquitto mosquitto-clients)",
    "mosquitto-clients missing",
    "ejabberd not installed (apt-get install ejabberd; .ci/run installs it)",
    "cloud-init not installed",
    "Debian chromium + chromium-driver are not installed",
    "could not import 'selenium.webdriver': No module named 'selenium'",
    "systemd-analyze missing",
    "Coral test data not found at /x",
    "the cached test bundle keeps no checkpoint",
    "bundle has no golden self-test",
    "no .venv-agent (Python 3.11, ai-edge-litert only)",
])
def test_missing_setup_is_refused_in_both_venvs(reason: str) -> None:
    assert not skip_allowed(reason, builder_test=False, has_builder=True)
    assert not skip_allowed(reason, builder_test=False, has_builder=False)


def test_agent_venv_may_skip_builder_only_tests() -> None:
    no_stack = "no cached test bundle and no builder stack in this venv (run the 3.12 suite first)"
    assert skip_allowed(no_stack, builder_test=False, has_builder=False)
    assert skip_allowed("could not import 'torch': No module named 'torch'", builder_test=True, has_builder=False)
    assert skip_allowed("could not import 'yaml': No module named 'yaml'", builder_test=False, has_builder=False)
    assert skip_allowed("PyYAML not installed", builder_test=False, has_builder=False)
    # ... but the builder venv installs every extra: the same skips there are missing setup.
    assert not skip_allowed("could not import 'torch': No module named 'torch'", builder_test=True, has_builder=True)
    assert not skip_allowed("PyYAML not installed", builder_test=False, has_builder=True)


def test_environment_limits_stay_allowed() -> None:
    assert skip_allowed("cannot mount a tmpfs here (needs root)", builder_test=False, has_builder=True)


def _run(tmp_path: Path, strict: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_a.py").write_text(
        "import pytest\n\n"
        "def test_needs_broker():\n    pytest.skip('mosquitto not installed')\n\n"
        "def test_needs_root():\n    pytest.skip('cannot mount a tmpfs here (needs root)')\n\n"
        "def test_fine():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "EDGE_STRICT_SKIPS": strict}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider",
                           "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_strict_run_fails_on_a_missing_prerequisite_and_says_why(tmp_path: Path) -> None:
    r = _run(tmp_path, "1")
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 passed, 1 skipped" in r.stdout
    assert "mosquitto not installed  [NOT ALLOWED: fails this run]" in r.stdout
    assert "needs root)  [allowed]" in r.stdout


def test_relaxed_run_passes_and_still_counts_the_skips(tmp_path: Path) -> None:
    r = _run(tmp_path, "0")
    assert r.returncode == 0, r.stdout
    assert "1 passed, 2 skipped" in r.stdout
    assert "2 skipped" in r.stdout and "mosquitto not installed  [would fail in CI]" in r.stdout


def test_strict_run_fails_on_a_module_level_skip(tmp_path: Path) -> None:
    (tmp_path / "test_b.py").write_text(
        "import pytest\n\npytest.skip('Coral test data not found at /nowhere', allow_module_level=True)\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "EDGE_STRICT_SKIPS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider",
                        "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_b.py")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 1, r.stdout
    assert "Coral test data not found at /nowhere  [NOT ALLOWED: fails this run]" in r.stdout
