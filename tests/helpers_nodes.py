"""Config files for real `edge-agent run` daemons in end-to-end tests (as tests/test_rollout_e2e.py writes them):
CPU backend on the trained test bundle, a video file as the camera, telemetry every second, fast trials."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def node_config(node: str, tmp: Path, broker_url: str, bundle: Path, trusted: Path, video: Path,
                groups: tuple[str, ...] = ("lab",), trial_frames: int = 8, trial_seconds: float = 3) -> Path:
    cfg = tmp / f"{node}.toml"
    group_list = ", ".join(f'"{g}"' for g in groups)
    cfg.write_text(textwrap.dedent(f"""\
        node_id = "{node}"
        groups = [{group_list}]
        state_dir = "{tmp / node}"
        trusted_keys_dir = "{trusted}"
        bundle = "{bundle}"
        state_interval_s = 5.0
        [broker]
        url = "{broker_url}"
        [camera]
        source = "{video}"
        [backend]
        prefer = "cpu"
        [detect]
        score_threshold = 0.3
        [telemetry]
        interval_s = 1.0
        hass_discovery = false
        [updates]
        trial_frames = {trial_frames}
        trial_seconds = {trial_seconds}
        read_timeout_s = 5
        connect_timeout_s = 2
        clock_sync = "off"
        """))
    return cfg


def spawn_agent(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """`edge-agent run --config cfg`, output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
