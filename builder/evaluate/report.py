"""The conversion report: report.json (everything), report.md (for people), report.png (a chart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.evaluate import cpuinfo, latency
from builder.quantize.coverage import summary_line

VARIANT_LABELS = {
    "pytorch_fp32": "PyTorch FP32",
    "fp32": "TFLite FP32",
    "cpu": "model_cpu (FP16 weights)",
    "dynamic": "model_dynamic (dynamic range)",
    "quant": "model_quant (full INT8)",
    "edgetpu": "model_edgetpu",
}


def _f(x: Any, fmt: str = ".4f") -> str:
    return "—" if x is None else format(x, fmt)


def _range(e: dict[str, Any], key: str, low: str, high: str, fmt: str) -> str:
    """`median (p10–p90)`, or the bare median of a report written before latencies had a spread."""
    lo, hi = e.get(low), e.get(high)
    return _f(e.get(key), fmt) + (f" ({lo:{fmt}}–{hi:{fmt}})" if lo is not None and hi is not None else "")


def variant_table(report: dict[str, Any]) -> list[str]:
    v = report["variants"]
    ref = v.get("pytorch_fp32", {})
    fp32_lat = v.get("fp32", {}).get("latency_ms")
    fp32_size = v.get("fp32", {}).get("size_bytes")
    lines = [
        "| variant | mAP50-95 | mAP50 | Δ mAP50-95 vs PyTorch (points) | CPU latency, ms: median (p10–p90) "
        "| × FP32 TFLite: paired, median (p10–p90) | size | × FP32 TFLite |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, e in v.items():
        m = e.get("map50_95")
        drop = None if m is None or ref.get("map50_95") is None else (m - ref["map50_95"]) * 100
        lat, size = e.get("latency_ms"), e.get("size_bytes")
        ratio = _range(e, "latency_ratio", "latency_ratio_p10", "latency_ratio_p90", ".2f") if "latency_ratio" in e else \
            _f(lat / fp32_lat if lat and fp32_lat else None, ".2f")
        lines.append(
            f"| {VARIANT_LABELS.get(k, k)} | {_f(m)} | {_f(e.get('map50'))} | {_f(drop, '+.2f')} | "
            f"{_range(e, 'latency_ms', 'latency_p10_ms', 'latency_p90_ms', '.1f')} | {ratio} | "
            f"{_f(size / 1e6 if size else None, '.1f')} MB | {_f(size / fp32_size if size and fp32_size else None, '.2f')} |"
        )
    return lines


def latency_lines(report: dict[str, Any]) -> list[str]:
    """How the latencies were measured, and on which CPU (INT8 speed depends on its dot-product instructions)."""
    lines = []
    if report.get("latency_method"):
        lines.append(f"Latency method: {report['latency_method']['text']}.")
    if report.get("cpu"):
        c = report["cpu"]
        dot = "has" if c.get("int8_dot_product") else "lacks"
        lines.append(f"CPU: {c['model']} ({c['arch']}, {c['cpus']} CPUs); int8 ISA flags: "
                     f"{' '.join(c['int8_flags']) or 'none'}; {dot} int8 dot-product instructions (x86 VNNI, "
                     "Arm SDOT/UDOT), on which INT8's CPU speed-up depends (docs/CONVERSION.md).")
    return ["", *lines] if lines else []


def class_head_lines(head: str | None) -> list[str]:
    """Which class outputs the INT8 graph has (docs/CONVERSION.md, "Class head")."""
    if not head:
        return []
    what = {"sigmoid": "probabilities (the sigmoid inside the graph, a fixed [0, 1] INT8 scale)",
            "logits": "raw logits (a calibrated INT8 range; the decoder applies the sigmoid)"}.get(head, head)
    return [f"Class head: {head}: {what}.", ""]


def markdown(report: dict[str, Any]) -> str:
    v = report["variants"]
    lines = [
        f"# {report['name']} v{report['version']}: conversion report",
        "",
        f"{report['architecture']}, {len(report['class_names'])} classes, input {report['imgsz']}×{report['imgsz']}; "
        f"calibrated on {report['calibration']['images']} images from `{report['calibration']['source']}`"
        + (f"; evaluated on the validation split of `{report['dataset']}`" if report.get("dataset") else "; no dataset given, so no accuracy"),
        "",
        *class_head_lines(report.get("class_head")),
        *coverage_lines(report["calibration"].get("coverage")),
        *variant_table(report),
        *latency_lines(report),
    ]
    if report.get("int8_drop_ci95"):
        lo, hi = report["int8_drop_ci95"]
        n = v.get("quant", {}).get("images")
        lines += ["", f"INT8 vs PyTorch, 95% paired-bootstrap interval of the mAP50-95 change: {lo * 100:+.2f} … {hi * 100:+.2f} points ({n} images)."]
    p = report["parity"]
    lines += ["", "## Checks", "",
              f"- Parity, FP32 TFLite vs PyTorch on {p['images']} real images: max abs error {p['max_abs_error']:.3g} (tolerance {p['atol']:g}).",
              f"- Quantized ranges: {'ok' if report['ranges']['ok'] else 'FAILED'}" + ("" if not report["ranges"]["problems"] else ""),
              ]
    for prob in report["ranges"]["problems"]:
        lines.append(f"  - {prob}")
    r = report["readiness"]
    lines += [f"- Edge TPU readiness (static): {r['summary']}."]
    if r.get("unsupported_ops"):
        lines.append(f"  - ops with problems: {', '.join(r['unsupported_ops'])}")
    c = report.get("edgetpu_compile")
    if c:
        lines.append(f"- edgetpu_compiler {c.get('compiler_version')}: {c.get('tpu_ops')} ops on the Edge TPU, {c.get('cpu_ops')} on the CPU.")
    else:
        lines += ["- `edgetpu_compiler` was not available here. On an x86-64 Linux host:", "", "  ```", f"  {report['edgetpu_command']}", "  ```"]
    lines += ["", "## Output quantization (model_quant.tflite)", "", "| output | kind | stride | scale | zero point | representable | FP32 on calibration | note |", "|---|---|---|---|---|---|---|---|"]
    for o in report["ranges"]["outputs"]:
        lo, hi = o["representable"]
        clo, chi = o["fp32_calibration"]
        lines.append(f"| {o['output']} | {o['kind']} | {o['stride']} | {o['scale']:.4g} | {o['zero_point']} | {lo:.2f} … {hi:.2f} | {clo:.2f} … {chi:.2f} | {o['note']} |")
    lines += ["", "Stage timings (s): " + ", ".join(f"{k}: {t}" for k, t in report.get("timings_s", {}).items()), ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    v = report["variants"]
    names = list(v)
    labels = [VARIANT_LABELS.get(k, k).split(" (")[0] for k in names]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    # A variant without a measurement gets no bar and says so: never draw an unmeasured value as 0.
    for ax, key, title, color, fmt, div in (
        (axes[0], "map50_95", "mAP50-95 (validation)", "#4c72b0", "{:.3f}", 1.0),
        (axes[1], "latency_ms", f"CPU latency, ms ({report['threads']} threads)", "#dd8452", "{:.1f}", 1.0),
        (axes[2], "size_bytes", "file size, MB", "#55a868", "{:.1f}", 1e6),
    ):
        vals = [v[k].get(key) for k in names]
        heights = [0.0 if x is None else x / div for x in vals]
        ax.bar(labels, heights, color=color)
        ax.set_title(title)
        ax.set_ylim(0, max(heights + [0.01]) * 1.15)
        for i, (x, h) in enumerate(zip(vals, heights, strict=True)):
            ax.text(i, h, "not measured" if x is None else fmt.format(h), ha="center", va="bottom", fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    fig.suptitle(f"{report['name']} v{report['version']}: {report['architecture']} at {report['imgsz']} px")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    # Measured here and now, so this machine is the one the latencies were measured on.
    report.setdefault("cpu", cpuinfo.read().as_dict())
    # Only a report measured with the one method (paired ratios in its rows) is described as such.
    if "latency_runs" in report and any("latency_ratio" in e for e in report["variants"].values()):
        report.setdefault("latency_method", latency.method_dict(report["latency_runs"], latency.WARMUP,
                                                                report.get("threads"), "fp32"))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(markdown(report))
    plot(report, out_dir / "report.png")


def coverage_lines(cov: dict[str, Any] | None) -> list[str]:
    """Calibration objects per head stride, and what is missing (builder.quantize.coverage)."""
    if not cov:
        return []
    return [f"Calibration coverage: {summary_line(cov)}.", *(f"- **warning:** {w}" for w in cov["warnings"]), ""]
