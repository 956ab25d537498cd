"""Benchmarks with teeth: a real run that misses its target exits 3 and says so in its result file; one that
meets it exits 0. Tiny configurations (a few nodes for a second, half-second loops) so each run takes seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.fleet.devservices import find_mosquitto

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from targets import MISSED, Target  # noqa: E402


def _bench(name: str, *args: str, out: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / name), *args, "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    return r, (json.loads(out.read_text()) if out.exists() else {})


def test_target_rules() -> None:
    assert Target("t", 1.0, 1.0, at_most=True).ok and not Target("t", 1.01, 1.0, at_most=True).ok
    assert Target("t", 0.95, 0.95, at_most=False).ok and not Target("t", 0.9, 0.95, at_most=False).ok
    assert not Target("t", None, 1.0, at_most=True).ok, "a figure that was never measured misses"


def test_dashboard_bench_missing_its_target_exits_3(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto mosquitto-clients)")
    r, result = _bench("bench_dashboard.py", "--nodes", "3", "--interval", "0.2", "--duration", "1", "--no-browser",
                       "--max-staleness", "0", out=tmp_path / "dashboard.json")
    assert r.returncode == MISSED, r.stdout + r.stderr
    assert "MISSED" in r.stdout
    assert result["targets_met"] is False
    [t] = [t for t in result["targets"] if "staleness via SSE" in t["name"]]
    assert t["limit"] == 0 and t["value"] > 0 and t["ok"] is False
    assert all(x["ok"] for x in result["targets"] if x is not t), result["targets"]  # only the impossible one missed
    assert result["run"]["machine"]["cpus"] and "created" in result["run"]


@pytest.mark.parametrize(("limits", "code"), [(("--min-limit-ratio", "1000", "--max-pre-post", "100"), MISSED),
                                              (("--min-limit-ratio", "0", "--max-pre-post", "100"), 0)],
                         ids=["impossible", "lenient"])
def test_pipeline_bench_exit_status_follows_its_targets(trained_bundle: Path, tmp_path: Path,
                                                        limits: tuple[str, ...], code: int) -> None:
    r, result = _bench("bench_pipeline.py", "--bundle", str(trained_bundle), "--seconds", "0.5", "--rounds", "1",
                       "--size", "320x240", *limits, out=tmp_path / "pipeline.json")
    assert r.returncode == code, r.stdout[-3000:] + r.stderr[-3000:]
    assert result["targets_met"] is (code == 0)
    assert [t["name"] for t in result["targets"]] == ["pipeline FPS / invoke limit", "pre + post / invoke"]
    assert result["pipeline_fps"] > 0
