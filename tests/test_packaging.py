"""The Pi install stays light: no heavy imports in the agent, no PyPI name squats among dependencies."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import agent

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "tensorflow", "onnx", "tf_keras", "keras", "libreyolo", "onnx2tf")


def test_importing_every_agent_module_pulls_no_heavy_framework() -> None:
    mods = [m.name for m in pkgutil.walk_packages(agent.__path__, "agent.")]
    assert len(mods) > 5
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"agent modules imported: {out.stdout.strip()}"


def _all_requirements() -> list[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs += extra
    return reqs


def test_pycoral_name_squat_is_not_a_dependency() -> None:
    # PyPI's "pycoral" is an unrelated "Allen Coral Atlas" CLI; Google's pycoral comes from Coral's apt repo.
    names = [r.split(";")[0].strip().lower() for r in _all_requirements()]
    assert not [n for n in names if n.startswith("pycoral")], names


def test_agent_extra_pulls_no_builder_stack() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    agent_reqs = " ".join(meta["optional-dependencies"]["agent"] + meta["dependencies"]).lower()
    for heavy in ("torch", "tensorflow", "onnx", "libreyolo"):
        assert heavy not in agent_reqs


def test_installed_agent_env_has_no_pycoral_squat() -> None:
    from importlib import metadata

    try:
        dist = metadata.distribution("pycoral")
    except metadata.PackageNotFoundError:
        return
    # If a pycoral is installed it must be Google's (it ships the `pycoral.utils.edgetpu` module).
    files = [str(f) for f in (dist.files or [])]
    assert any("pycoral/utils/edgetpu" in f for f in files), "the PyPI pycoral name squat is installed"
