"""docs/agent.example.toml loads as shipped, and so do its commented multi-camera and TPU-pool examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "agent.example.toml"
BEGIN, END = "# ---- [[cameras]] example: begin", "# ---- [[cameras]] example: end"


def _uncomment_cameras(text: str) -> str:
    """What an operator does: drop [camera], uncomment the [[cameras]] block."""
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    head = re.sub(r"(?ms)^\[camera\]\n.*?(?=^\n)", "", head)  # the [camera] section up to its blank line
    cams = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.splitlines())
    return head + cams + tail


def test_the_example_loads_as_one_default_camera() -> None:
    cfg = load_config(EXAMPLE)
    assert [c.name for c in cfg.camera_entries()] == ["default"]


@pytest.mark.parametrize("devices, want", [('["usb:0", "usb:1"]', ["usb:0", "usb:1"]), ('"all"', "all")])
def test_the_commented_cameras_and_tpu_pool_load(tmp_path: Path, devices: str, want: object) -> None:
    text = _uncomment_cameras(EXAMPLE.read_text())
    line = next(x for x in text.splitlines() if x.startswith("# devices = "))
    text = text.replace(line, f"devices = {devices}")
    p = tmp_path / "agent.toml"
    p.write_text(text)
    cfg = load_config(p)
    drive, garden = cfg.camera_entries()
    assert (drive.name, drive.target_fps, drive.detect.score_threshold) == ("driveway", 5.0, 0.6)
    assert drive.detect.classes == ["car", "person"] and len(drive.zones) == 1 and len(drive.zones[0]) == 4
    assert (garden.name, garden.target_fps, garden.detect.score_threshold, garden.read_timeout_s) == (
        "garden", 2.0, 0.35, 3.0)
    assert cfg.backend.detectors["coral"].devices == want  # type: ignore[union-attr]
