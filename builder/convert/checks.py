"""Checks around the conversion: calibration coverage (objects per stride, before converting), FP32 parity with
PyTorch and the INT8 output ranges."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.tensors import TensorInfo
from builder.convert.options import ConvertError, Log
from builder.data.calibration import CalibrationError, open_source
from builder.data.strides import STRIDES
from builder.evaluate.runners import Runner, TFLiteRunner
from builder.quantize.coverage import count_coverage, summary_line

FIRED_LOGIT = 1.0  # a level "fires" when FP32 reaches this class logit (score 0.73) on real images
PARITY_ATOL = 1e-3  # FP32 TFLite vs PyTorch, absolute, on logits of magnitude ~10 (measured: 9.5e-6)


class ParityError(ValueError):
    """The candidate model lacks an output the reference has."""


def nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def parity_check(reference: Runner, candidate: Runner, canvases: np.ndarray, atol: float = PARITY_ATOL) -> dict[str, Any]:
    """Max abs error of `candidate` (TFLite, NHWC) vs `reference` (PyTorch, NCHW) on real images.

    Outputs are matched by shape, so the two output orders need not agree.
    """
    worst = 0.0
    ref_max = 0.0
    for c in canvases:
        ref = [nhwc(o) for o in reference(c)]
        got = candidate(c)
        pool = list(range(len(got)))
        for r in ref:
            j = next((k for k in pool if got[k].shape == r.shape), None)
            if j is None:
                raise ParityError(f"FP32 TFLite has no output shaped {r.shape} (has {[g.shape for g in got]})")
            pool.remove(j)
            worst = max(worst, float(np.abs(got[j] - r).max()))
            ref_max = max(ref_max, float(np.abs(r).max()))
    return {"images": len(canvases), "max_abs_error": worst, "reference_max_abs": ref_max, "atol": atol, "ok": worst <= atol}


def output_ranges(runner: Runner, canvases: Sequence[np.ndarray] | np.ndarray) -> list[tuple[float, float]]:
    """Per-output (min, max) of a float model over some canvases (output-detail order)."""
    lo: list[float] = []
    hi: list[float] = []
    for c in canvases:
        outs = runner(c)
        if not lo:
            lo = [float("inf")] * len(outs)
            hi = [float("-inf")] * len(outs)
        for i, o in enumerate(outs):
            lo[i] = min(lo[i], float(o.min()))
            hi[i] = max(hi[i], float(o.max()))
    return list(zip(lo, hi, strict=True))


def range_check(
    quant: TFLiteRunner,
    fp32: TFLiteRunner,
    num_classes: int,
    calib: np.ndarray,
    val: np.ndarray | None,
    max_images: int = 64,
) -> dict[str, Any]:
    """Can each INT8 output represent what the FP32 model produces?

    A class output whose zero point sits at 255 (uint8) represents no logit above 0: every score at
    that level is capped at sigmoid(0) = 0.5 — the calibration images had no positives there. That
    is an error when FP32 does produce confident logits at that level (> FIRED_LOGIT on the validation
    images when given, else on the calibration images), or when no level can represent a positive logit.
    """
    qdec = quant.decoder(num_classes)
    fdec = fp32.decoder(num_classes)
    calib_r = output_ranges(fp32, calib[:max_images])
    val_r = output_ranges(fp32, val[:max_images]) if val is not None and len(val) else None
    rows: list[dict[str, Any]] = []
    for ql, fl in zip(qdec.levels, fdec.levels, strict=True):
        for kind, qi, fi in (("cls", ql.cls_index, fl.cls_index), ("reg", ql.reg_index, fl.reg_index)):
            rows.append(_range_row(quant.outputs[qi], kind, ql.stride, calib_r[fi], val_r[fi] if val_r is not None else None))
    problems = [f"{r['severity']}: {r['output']} ({r['kind']}, stride {r['stride']}): {r['note']}"
                for r in rows if r["severity"] != "ok"]
    unrepresentable = sum(1 for r in rows if r["kind"] == "cls" and r["representable"][1] <= 0.0)
    if unrepresentable == len(qdec.levels):
        problems.append("error: no class output can represent a positive logit: every score is capped at 0.5")
    errors = [p for p in problems if p.startswith("error")]
    return {"outputs": rows, "problems": problems, "ok": not errors, "calibration_images": int(min(len(calib), max_images)),
            "validation_images": int(min(len(val), max_images)) if val is not None else 0}


def _range_row(
    tensor: TensorInfo,
    kind: str,
    stride: int,
    calib_range: tuple[float, float],
    val_range: tuple[float, float] | None,
) -> dict[str, Any]:
    """One INT8 output: its representable range against the FP32 ranges, with severity and note."""
    scale, zp = tensor.quant or (1.0, 0)
    info = np.iinfo(tensor.dtype)
    lo_r, hi_r = scale * (info.min - zp), scale * (info.max - zp)
    row: dict[str, Any] = {
        "output": tensor.name, "kind": kind, "stride": stride, "scale": scale, "zero_point": zp,
        "representable": [lo_r, hi_r], "fp32_calibration": list(calib_range), "severity": "ok", "note": "",
    }
    if val_range is not None:
        row["fp32_validation"] = list(val_range)
    if kind == "cls" and hi_r <= 0.0:
        seen = max(calib_range[1], val_range[1] if val_range is not None else calib_range[1])
        # Capping matters when FP32 gives confident scores there (logit > 1: score > 0.73).
        fired = seen > FIRED_LOGIT
        row["severity"] = "error" if fired else "warning"
        row["note"] = (
            f"zero point {zp}: no positive logit representable, scores capped at 0.5 at stride {stride}"
            + (f" although FP32 reaches logit {seen:.2f} there" if fired else
               " (no positives at this scale in the data seen; add calibration images with objects of this size)")
        )
    elif val_range is not None and val_range[1] > hi_r + 2 * scale:
        row["severity"] = "warning"
        row["note"] = f"validation max {val_range[1]:.2f} exceeds the calibrated max {hi_r:.2f} (clipped)"
    return row


def calibration_coverage_check(
    source: Path, files: Sequence[str], imgsz: int, strict: bool = False, log: Log | None = None,
    strides: Sequence[int] = STRIDES,
) -> dict[str, Any]:
    """Objects per stride in the calibration set (builder.quantize.coverage), logged with a warning per missing
    stride. `strict` (--strict-calibration) fails the build unless every stride has objects, which needs labels:
    "missing" and "unknown" both fail. `files` are the calibration images used, relative to `source` (a folder or
    an archive, opened again here)."""
    try:
        with open_source(Path(source)) as root:
            cov = count_coverage(root, files, imgsz, strides)
    except CalibrationError as exc:
        raise ConvertError(str(exc)) from exc
    say = log or (lambda m: None)
    say(f"      {summary_line(cov)}")
    for w in cov["warnings"]:
        say(f"      warning: {w}")
    cov["strict"] = strict
    if strict and cov["status"] != "ok":
        what = ("no labels to count objects by stride" if cov["status"] == "unknown"
                else "no calibration objects at stride " + ", ".join(str(s) for s in cov["missing"]))
        raise ConvertError(f"--strict-calibration: {what} (see the warnings above); add labelled calibration images "
                           "with objects of every size, or drop --strict-calibration to convert with a warning")
    return cov
