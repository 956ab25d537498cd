"""The one latency method (builder.evaluate.latency) and the CPU facts every latency carries (cpuinfo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from builder.evaluate import cpuinfo, latency
from builder.evaluate.report import markdown


def test_spread_is_median_and_p10_p90() -> None:
    s = latency.spread(list(range(1, 12)))  # 1..11
    assert s.median == 6.0 and s.p10 == pytest.approx(2.0) and s.p90 == pytest.approx(10.0)
    with pytest.raises(ValueError):
        latency.spread([])


def test_ratios_are_paired_per_round() -> None:
    # Round 2 is slow for everyone (background load): paired ratios cancel it, medians of times would not.
    times = {"fp32": [1.0, 10.0, 1.0], "quant": [0.5, 5.0, 0.5]}
    res = latency.summarize(times, "fp32", warmup=3, threads=2)
    assert res.ratio["quant"] == latency.Spread(0.5, 0.5, 0.5)
    assert res.ratio["fp32"].median == 1.0
    assert res.ms["quant"].median == 500.0  # milliseconds
    e = res.entry("quant")
    assert e["latency_ratio"] == 0.5 and e["latency_p10_ms"] <= e["latency_ms"] <= e["latency_p90_ms"]
    with pytest.raises(ValueError):
        latency.paired_ratios({"fp32": [1.0, 2.0], "quant": [1.0]}, "fp32")


def test_interleaved_rounds_warm_up_then_alternate() -> None:
    calls: list[str] = []
    ticks = iter(np.arange(0.0, 100.0, 1.0))
    times = latency.interleaved_times({k: (lambda k=k: calls.append(k)) for k in "ABC"}, rounds=2, warmup=1,
                                      clock=lambda: float(next(ticks)))
    assert calls == ["A", "B", "C", "A", "B", "C", "A", "B", "C"]  # warm-up, then A B C A B C
    assert times == {"A": [1.0, 1.0], "B": [1.0, 1.0], "C": [1.0, 1.0]}


def test_measure_reports_its_method() -> None:
    res = latency.measure({"fp32": lambda: None, "quant": lambda: None}, "fp32", rounds=4, threads=2)
    m = res.method()
    assert (m["rounds"], m["warmup"], m["threads"], m["reference"]) == (4, latency.WARMUP, 2, "fp32")
    assert "interleaved" in m["text"] and "paired" in m["text"]
    with pytest.raises(ValueError):
        latency.measure({"quant": lambda: None}, "fp32", rounds=1, threads=1)


A72 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"
A76 = ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
       "lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n")
X86 = "model name\t: Some EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n"


def test_cpuinfo_flags_pi4_pi5_x86() -> None:
    pi4 = cpuinfo.parse(A72, "aarch64", 4, "Raspberry Pi 4 Model B")
    pi5 = cpuinfo.parse(A76, "aarch64", 4, "Raspberry Pi 5 Model B")
    x86 = cpuinfo.parse(X86, "x86_64", 2)
    assert "Cortex-A72" in pi4.model and pi4.flags == ("asimd",) and not pi4.int8_dot_product
    assert "Cortex-A76" in pi5.model and "asimddp" in pi5.flags and pi5.int8_dot_product
    assert x86.model == "Some EPYC" and x86.flags == ("avx2",) and not x86.int8_dot_product
    assert cpuinfo.parse("", "riscv64").model == "riscv64"
    assert set(cpuinfo.read().as_dict()) >= {"model", "int8_flags", "int8_dot_product"}


def test_report_md_shows_cpu_method_and_spread() -> None:
    res = latency.summarize({"fp32": [0.010, 0.011, 0.012], "quant": [0.004, 0.005, 0.006]}, "fp32", 3, 2)
    report = {
        "name": "m", "version": "1", "architecture": "yolo_nas_s", "imgsz": 128, "class_names": ["a"],
        "calibration": {"images": 1, "source": "x"}, "dataset": None,
        "variants": {k: {**res.entry(k), "size_bytes": 1000} for k in ("fp32", "quant")},
        "latency_method": res.method(), "cpu": cpuinfo.parse(A76, "aarch64", 4, "Raspberry Pi 5").as_dict(),
        "parity": {"images": 1, "max_abs_error": 0.0, "atol": 1e-3}, "ranges": {"ok": True, "problems": [],
                                                                                 "outputs": []},
        "readiness": {"summary": "ok"}, "edgetpu_command": "edgetpu_compiler x",
    }
    md = markdown(report)
    assert "Latency method: 3 warm-up calls" in md and "paired" in md
    assert "Cortex-A76" in md and "asimddp" in md and "has int8 dot-product" in md
    assert "| 5.0 (4.2–5.8) |" in md and "| 0.45 (0.41–0.49) |" in md  # medians with their p10–p90
    assert "Class head" not in md  # a report from before the class head was recorded
    assert "Class head: sigmoid: probabilities" in markdown({**report, "class_head": "sigmoid"})


def test_write_report_records_cpu_and_method(tmp_path: Path) -> None:
    import json

    from builder.evaluate.report import write_report

    res = latency.summarize({"fp32": [0.010, 0.012], "quant": [0.004, 0.005]}, "fp32", latency.WARMUP, 2)
    report = {
        "name": "m", "version": "1", "architecture": "yolo_nas_s", "imgsz": 128, "class_names": ["a"],
        "calibration": {"images": 1, "source": "x"}, "dataset": None, "threads": 2, "latency_runs": 2,
        "variants": {k: {**res.entry(k), "size_bytes": 1000} for k in ("fp32", "quant")},
        "parity": {"images": 1, "max_abs_error": 0.0, "atol": 1e-3},
        "ranges": {"ok": True, "problems": [], "outputs": []}, "readiness": {"summary": "ok"},
        "edgetpu_command": "edgetpu_compiler x",
    }
    write_report(tmp_path, report)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["cpu"] == cpuinfo.read().as_dict()
    assert saved["latency_method"] == res.method()  # the same description the measurement gives
    assert "Latency method:" in (tmp_path / "report.md").read_text()
