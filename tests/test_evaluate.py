"""`edge-builder evaluate` reproduces the conversion report's numbers (same pre/post-processing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder.cli", "evaluate", *args], capture_output=True, text=True, cwd=ROOT)


def test_tflite_matches_the_report(trained_bundle: Path, synth_dataset: Path) -> None:
    rep = json.loads((trained_bundle / "report.json").read_text())
    r = _evaluate("--model_path", str(trained_bundle / "model_quant.tflite"), "--dataset_path", str(synth_dataset), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["map50_95"] == pytest.approx(rep["variants"]["quant"]["map50_95"], abs=1e-9)
    assert out["map50"] == pytest.approx(rep["variants"]["quant"]["map50"], abs=1e-9)
    assert out["images"] == rep["variants"]["quant"]["images"]
    assert set(out["per_class"]) == set(rep["class_names"])


@pytest.mark.slow
def test_checkpoint_matches_the_report(trained_bundle_dir: Path, trained_bundle: Path, synth_dataset: Path) -> None:
    ckpts = sorted(trained_bundle_dir.rglob("ckpt_best.pth"))
    if not ckpts:
        pytest.skip("the cached test bundle keeps no checkpoint")
    rep = json.loads((trained_bundle / "report.json").read_text())
    r = _evaluate("--model_path", str(ckpts[0]), "--dataset_path", str(synth_dataset), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["map50_95"] == pytest.approx(rep["variants"]["pytorch_fp32"]["map50_95"], abs=1e-6)


def test_bad_input(tmp_path: Path) -> None:
    r = _evaluate("--model_path", str(tmp_path / "nope.tflite"), "--dataset_path", str(tmp_path))
    assert r.returncode == 1 and "does not exist" in r.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"garbage")
    from builder.data.synth import make_dataset

    ds = make_dataset(tmp_path / "ds", n_train=1, n_val=1, imgsz=64)
    r = _evaluate("--model_path", str(bad), "--dataset_path", str(ds))
    assert r.returncode == 1 and "cannot load TFLite model" in r.stderr
