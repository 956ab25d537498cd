"""`edge-builder convert`: checkpoint → INT8 TFLite variants → a signed model bundle with measured numbers.

Stages (each prints progress):
 1. load the checkpoint (builder.train.checkpoint; never downloads anything), check model type and output dir;
 2. calibration set: images (folder or .tar.gz), deterministic sample, the agent's letterbox;
 3. export the fully fused TPU body to ONNX (builder.export.onnx_body);
 4. in a subprocess (TensorFlow must not share a process with a freshly built libreyolo model):
    onnx2tf → SavedModel → model_fp32 / model_cpu (FP16 weights) / model_dynamic / model_quant (INT8);
 5. parity: FP32 TFLite against PyTorch on real images, max abs error, fail above tolerance;
 6. quantized-range check of every output (the "calibration logits problem");
 7. Edge TPU readiness (static) and, when `edgetpu_compiler` is on PATH, the real compile;
 8. accuracy (with a dataset) and CPU latency of every variant, report.json / .md / .png;
 9. golden self-test data from the real INT8 model, manifest.json, signature.

The bundle is built in a hidden staging directory beside the destination and renamed into place
only when everything succeeded, so a failed run never leaves a directory that looks like a bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.preprocess import to_input
from builder.data.calibration import CalibrationError, load_calibration

MODEL_TYPES = ("yolo_nas",)
OUTPUT_FORMATS = ("tflite",)
FIRED_LOGIT = 1.0  # a level "fires" when FP32 reaches this class logit (score 0.73) on real images
PARITY_ATOL = 1e-3  # FP32 TFLite vs PyTorch, absolute, on logits of magnitude ~10 (measured: 9.5e-6)
BUNDLE_FILES = ("model_cpu.tflite", "model_dynamic.tflite", "model_quant.tflite")


class ConvertError(Exception):
    """A conversion failed for a reason the user can act on; the message says which."""


@dataclass
class LoadedModel:
    model: Any  # libreyolo LibreYOLONASModel, eval mode
    num_classes: int
    class_names: list[str]
    imgsz: int
    architecture: str
    reg_max: int = 16
    strides: list[int] = field(default_factory=lambda: [8, 16, 32])
    preprocess: Any = None  # agent.protocol.manifest.Preprocess
    meta: dict[str, Any] = field(default_factory=dict)


def load_model(path: Path) -> LoadedModel:
    """Load a checkpoint from `edge-builder train` (or a plain libreyolo YOLO-NAS one); clear errors."""
    from builder.train.checkpoint import CheckpointError, load_checkpoint

    path = Path(path)
    if not path.exists():
        raise ConvertError(f"checkpoint {path} does not exist")
    try:
        model, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise ConvertError(str(exc)) from exc
    return LoadedModel(
        model=model,
        num_classes=meta.num_classes,
        class_names=list(meta.class_names),
        imgsz=int(meta.imgsz),
        architecture=str(meta.architecture),
        reg_max=int(meta.reg_max),
        strides=list(meta.strides),
        preprocess=meta.preprocess,
        meta=json.loads(meta.model_dump_json()),
    )


# ------------------------------------------------------------------------------------------ helpers


def _log_default(msg: str) -> None:
    print(msg, flush=True)


class _Stages:
    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total = total
        self.n = 0
        self.log = log
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self._cur: tuple[str, float] | None = None

    def start(self, title: str) -> None:
        self._finish()
        self.n += 1
        self.log(f"[{self.n}/{self.total}] {title}")
        self._cur = (title, time.perf_counter())

    def _finish(self) -> None:
        if self._cur:
            title, t = self._cur
            self.timings[title] = round(time.perf_counter() - t, 2)
            self._cur = None

    def done(self) -> float:
        self._finish()
        return time.perf_counter() - self.t0


def _check_output_dir(out: Path) -> None:
    """Fail before any heavy work when the destination cannot be written."""
    if out.exists() and not out.is_dir():
        raise ConvertError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ConvertError(f"output {out} is a non-empty directory that is not a bundle; refusing to replace it")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent))
        probe.rmdir()
    except OSError as exc:
        raise ConvertError(f"cannot write to output directory {parent}: {exc.strerror or exc}") from exc


def _install(staging: Path, out: Path) -> None:
    """Replace `out` by `staging` with renames (same filesystem), never leaving a half bundle."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def default_out_dir(model_path: Path, name: str) -> Path:
    """output/models/NAME relative to the working directory (beside output/checkpoints/NAME)."""
    return Path("output") / "models" / name


def _default_name(model_path: Path) -> str:
    # output/checkpoints/NAME/ckpt_best.pth → NAME (the experiment name)
    import re

    cand = model_path.parent.name if model_path.stem.startswith(("ckpt_", "best", "last")) else model_path.stem
    cand = re.sub(r"[^A-Za-z0-9._-]", "_", cand)[:64] or "model"
    return cand


def run_tf_convert(
    onnx_path: Path,
    calib_npy: Path,
    out: Path,
    work: Path,
    variants: Sequence[str],
    per_tensor: bool,
    log: Callable[[str], None],
) -> None:
    """Run builder.quantize.tf_convert in a child Python (same interpreter) and relay its stage lines."""
    cmd = [
        sys.executable, "-m", "builder.quantize.tf_convert",
        "--onnx", str(onnx_path), "--calib", str(calib_npy), "--out", str(out), "--work", str(work),
        "--variants", ",".join(variants),
    ]
    if per_tensor:
        cmd.append("--per-tensor")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    labels = {
        "saved_model": "onnx2tf → SavedModel",
        "fp32": "model_fp32.tflite (parity reference)",
        "cpu": "model_cpu.tflite (FP16 weights)",
        "dynamic": "model_dynamic.tflite (dynamic range)",
        "quant": "model_quant.tflite (full INT8, uint8 I/O)",
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "STAGE":
            size = int(parts[3])
            extra = f", {size / 1e6:.1f} MB" if size else ""
            log(f"      {labels.get(parts[1], parts[1])}: {float(parts[2]):.1f} s{extra}")
    _, err = proc.communicate()
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        logs = [p for p in (work / "onnx2tf.log", work / "tflite_converter.log") if p.exists()]
        hint = f" (logs: {', '.join(map(str, logs))})" if logs else ""
        raise ConvertError(f"TensorFlow conversion failed (exit {proc.returncode}){hint}:\n{tail}")


def nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def parity_check(
    torch_runner: Any, fp32_path: Path, canvases: np.ndarray, atol: float = PARITY_ATOL
) -> dict[str, Any]:
    """Max abs error of FP32 TFLite vs PyTorch on real images, outputs matched by shape."""
    from builder.evaluate.evaluator import TFLiteRunner

    tfl = TFLiteRunner(fp32_path)
    worst = 0.0
    ref_max = 0.0
    for c in canvases:
        ref = [nhwc(o) for o in torch_runner(c)]
        got = tfl(c)
        pool = list(range(len(got)))
        for r in ref:
            j = next((k for k in pool if got[k].shape == r.shape), None)
            if j is None:
                raise ConvertError(f"FP32 TFLite has no output shaped {r.shape} (has {[g.shape for g in got]})")
            pool.remove(j)
            worst = max(worst, float(np.abs(got[j] - r).max()))
            ref_max = max(ref_max, float(np.abs(r).max()))
    return {"images": len(canvases), "max_abs_error": worst, "reference_max_abs": ref_max, "atol": atol, "ok": worst <= atol}


def output_ranges(runner: Any, canvases: Sequence[np.ndarray] | np.ndarray) -> list[tuple[float, float]]:
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
    quant_path: Path,
    fp32_path: Path,
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
    from agent.inference.decode import YoloNasDecoder
    from builder.evaluate.evaluator import TFLiteRunner

    q = TFLiteRunner(quant_path)
    f = TFLiteRunner(fp32_path)
    imgsz = q.imgsz
    qdec = YoloNasDecoder.from_details(q._out, num_classes, imgsz)
    fdec = YoloNasDecoder.from_details(f._out, num_classes, imgsz)
    calib_r = output_ranges(f, calib[:max_images])
    val_r = output_ranges(f, val[:max_images]) if val is not None and len(val) else None
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    unrepresentable = 0
    for ql, fl in zip(qdec.levels, fdec.levels, strict=True):
        for kind, qi, fi in (("cls", ql.cls_index, fl.cls_index), ("reg", ql.reg_index, fl.reg_index)):
            det = q._out[qi]
            scale, zp = qdec.quant[qi] or (1.0, 0)
            info = np.iinfo(np.dtype(det["dtype"]))
            lo_r, hi_r = scale * (info.min - zp), scale * (info.max - zp)
            c_lo, c_hi = calib_r[fi]
            row: dict[str, Any] = {
                "output": det["name"], "kind": kind, "stride": ql.stride, "scale": scale, "zero_point": zp,
                "representable": [lo_r, hi_r], "fp32_calibration": [c_lo, c_hi], "severity": "ok", "note": "",
            }
            if val_r is not None:
                row["fp32_validation"] = list(val_r[fi])
            if kind == "cls" and hi_r <= 0.0:
                unrepresentable += 1
                seen = max(c_hi, val_r[fi][1] if val_r is not None else c_hi)
                # Capping matters when FP32 gives confident scores there (logit > 1: score > 0.73).
                fired = seen > FIRED_LOGIT
                row["severity"] = "error" if fired else "warning"
                row["note"] = (
                    f"zero point {zp}: no positive logit representable, scores capped at 0.5 at stride "
                    f"{ql.stride}" + (f" although FP32 reaches logit {seen:.2f} there" if fired else
                                      " (no positives at this scale in the data seen; add calibration images with "
                                      "objects of this size)")
                )
                problems.append(f"{row['severity']}: {det['name']} ({kind}, stride {ql.stride}): {row['note']}")
            elif val_r is not None and val_r[fi][1] > hi_r + 2 * scale:
                row["severity"] = "warning"
                row["note"] = f"validation max {val_r[fi][1]:.2f} exceeds the calibrated max {hi_r:.2f} (clipped)"
                problems.append(f"warning: {det['name']} ({kind}, stride {ql.stride}): {row['note']}")
            rows.append(row)
    n_cls = len(qdec.levels)
    if unrepresentable == n_cls:
        problems.append("error: no class output can represent a positive logit: every score is capped at 0.5")
    errors = [p for p in problems if p.startswith("error")]
    return {"outputs": rows, "problems": problems, "ok": not errors, "calibration_images": int(min(len(calib), max_images)),
            "validation_images": int(min(len(val), max_images)) if val is not None else 0}


def tensor_spec(detail: dict[str, Any]) -> Any:
    from agent.inference.tflite import quant_params
    from agent.protocol.manifest import TensorSpec

    q = quant_params(detail) if np.dtype(detail["dtype"]).kind in "ui" else None
    return TensorSpec(
        name=str(detail["name"]),
        shape=[int(d) for d in detail["shape"]],
        dtype=np.dtype(detail["dtype"]).name,  # type: ignore[arg-type]
        scale=q[0] if q else None,
        zero_point=q[1] if q else None,
    )


# -------------------------------------------------------------------------------------------- convert


def convert(
    model_path: Path | str,
    calibration_dir: Path | str,
    out_dir: Path | str | None = None,
    imgsz: int | None = None,
    key: Path | str | None = None,
    dataset_path: Path | str | None = None,
    version: int = 1,
    name: str | None = None,
    model_type: str = "yolo_nas",
    output_formats: Sequence[str] = ("tflite",),
    n_calib: int = 300,
    seed: int = 0,
    per_tensor: bool = False,
    threads: int = 2,
    latency_runs: int = 20,
    allow_clipped_outputs: bool = False,
    allow_partial: bool = False,
    compile_edgetpu: bool = True,
    keep_intermediate: Path | str | None = None,
    log: Callable[[str], None] = _log_default,
) -> Path:
    """Convert a checkpoint to a model bundle directory and return its path (see module docstring)."""
    from agent.protocol.manifest import (
        GoldenTest,
        Manifest,
        ModelFiles,
        OutputLayout,
        Preprocess,
        VariantMetrics,
    )
    from agent.security.bundle import file_entry, write_manifest
    from agent.security.signing import SigningKey
    from builder.edgetpu import compiler as edgetpu
    from builder.edgetpu.tflite_inspect import readiness
    from builder.evaluate.evaluator import (
        TFLiteRunner,
        TorchRunner,
        bar,
        evaluate_runner,
        load_dataset_items,
        time_runner,
    )
    from builder.evaluate.report import write_report
    from builder.export.onnx_body import export_onnx, op_histogram

    if model_type not in MODEL_TYPES:
        raise ConvertError(f"unknown --model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)}")
    bad_formats = [f for f in output_formats if f not in OUTPUT_FORMATS]
    if bad_formats:
        raise ConvertError(f"unsupported --output_formats {bad_formats}; supported: {', '.join(OUTPUT_FORMATS)}")
    model_path = Path(model_path)
    signing_key = None
    if key is not None:
        try:
            signing_key = SigningKey.load(Path(key))
        except Exception as exc:  # noqa: BLE001 - any unreadable key is the same user error
            raise ConvertError(f"cannot load signing key {key}: {exc}") from exc
    calib_src = Path(calibration_dir)
    if not calib_src.exists():
        raise ConvertError(f"calibration source {calib_src} does not exist")

    stages = _Stages(9, log)
    stages.start(f"loading checkpoint {model_path}")
    lm = load_model(model_path)
    size = int(imgsz or lm.imgsz)
    if size % 32:
        raise ConvertError(f"--imgsz must be a multiple of 32 (the largest stride), got {size}")
    name = name or _default_name(model_path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(model_path, name)
    _check_output_dir(out)
    log(f"      {lm.architecture}, {lm.num_classes} classes {lm.class_names}, input {size}x{size} → {out}")
    preprocess = lm.preprocess if isinstance(lm.preprocess, Preprocess) else Preprocess()
    items: list[Any] = []
    if dataset_path is not None:  # validate the dataset before any heavy work
        from builder.evaluate.evaluator import EvaluateError

        try:
            ds_names, items = load_dataset_items(Path(dataset_path), "val")
        except EvaluateError as exc:
            raise ConvertError(str(exc)) from exc
        if len(ds_names) != lm.num_classes:
            raise ConvertError(f"dataset {dataset_path} has {len(ds_names)} classes, the checkpoint {lm.num_classes}")
        if not items:
            raise ConvertError(f"dataset {dataset_path} has no validation images")

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix="edge-convert-"))
    try:
        stages.start(f"calibration set from {calib_src}")
        try:
            calib, calib_names = load_calibration(
                calib_src, size, n=n_calib, seed=seed, pad_value=preprocess.pad_value,
                warn=lambda m: log(f"      warning: {m}"), progress=bar("letterbox"),
            )
        except CalibrationError as exc:
            raise ConvertError(str(exc)) from exc
        log(f"      {len(calib)} images")
        np.save(work / "calib.npy", calib)

        stages.start("exporting the fused TPU body to ONNX")
        onnx_path = export_onnx(lm.model, size, work / "body.onnx")
        hist = op_histogram(onnx_path)
        log("      " + ", ".join(f"{k} {v}" for k, v in hist.items()))

        stages.start("TensorFlow: onnx2tf and TFLiteConverter (subprocess)")
        run_tf_convert(onnx_path, work / "calib.npy", work, work, ("fp32", "cpu", "dynamic", "quant"), per_tensor, log)
        for f in BUNDLE_FILES:
            shutil.copy2(work / f, staging / f)

        stages.start("parity: FP32 TFLite vs PyTorch on real images")
        torch_runner = TorchRunner(lm.model, size, threads)
        parity = parity_check(torch_runner, work / "model_fp32.tflite", calib[: min(8, len(calib))])
        log(f"      max abs error {parity['max_abs_error']:.3g} over {parity['images']} images (tolerance {parity['atol']:g})")
        if not parity["ok"]:
            raise ConvertError(
                f"FP32 TFLite differs from PyTorch by {parity['max_abs_error']:.3g} (> {parity['atol']:g}): "
                "the ONNX/TF conversion changed the network"
            )
        # Every variant must load and run in the agent's runtime.
        variant_runners: dict[str, TFLiteRunner] = {}
        for v in ("cpu", "dynamic", "quant"):
            try:
                r = TFLiteRunner(staging / f"model_{v}.tflite", threads, name=v)
                r(calib[0])
            except Exception as exc:  # noqa: BLE001
                raise ConvertError(f"model_{v}.tflite does not run in the TFLite runtime: {exc}") from exc
            variant_runners[v] = r

        class_names = lm.class_names
        val_canvases = None
        if items:
            from agent.inference.preprocess import letterbox, load_image

            val_canvases = np.stack([letterbox(load_image(str(it.image)), size, preprocess.pad_value)[0] for it in items[:64]]) if items else None

        stages.start("quantized-range check (INT8 outputs vs FP32)")
        ranges = range_check(staging / "model_quant.tflite", work / "model_fp32.tflite", lm.num_classes, calib, val_canvases)
        for p in ranges["problems"]:
            log(f"      {p}")
        if not ranges["problems"]:
            log("      every INT8 output represents the FP32 range it needs")
        if not ranges["ok"] and not allow_clipped_outputs:
            raise ConvertError(
                "INT8 calibration clipped the class outputs (see above): use calibration images like the "
                "deployment data with objects at every scale (edge-builder calibration build), or pass "
                "--allow-clipped-outputs to accept it"
            )

        stages.start("Edge TPU readiness")
        ready = readiness(staging / "model_quant.tflite")
        log(f"      {ready['summary']}")
        compiled: dict[str, Any] | None = None
        if compile_edgetpu and edgetpu.find_compiler():
            try:
                compiled = edgetpu.compile_model(staging / "model_quant.tflite", staging, allow_partial=allow_partial)
            except edgetpu.CompileError as exc:
                raise ConvertError(str(exc)) from exc
            log(f"      compiled: {compiled['tpu_ops']} ops on the Edge TPU, {compiled['cpu_ops']} on the CPU")
        else:
            log("      edgetpu_compiler not found: model_edgetpu.tflite not written. On an x86-64 Linux host run:")
            log(f"        {edgetpu.compile_command(out / 'model_quant.tflite', out)}")

        stages.start("accuracy and latency of every variant" + ("" if items else " (latency only: no --dataset_path)"))
        canvas = calib[0]
        results: dict[str, Any] = {}
        runners: list[tuple[str, Any]] = [("pytorch_fp32", torch_runner), ("fp32", TFLiteRunner(work / "model_fp32.tflite", threads, "fp32"))]
        runners += [(v, variant_runners[v]) for v in ("cpu", "dynamic", "quant")]
        evals: dict[str, Any] = {}
        for key_name, runner in runners:
            entry: dict[str, Any] = {}
            if items and key_name != "fp32":  # FP32 TFLite = PyTorch (parity checked): latency/size reference only
                ev = evaluate_runner(runner, items, lm.num_classes, bar(key_name))
                evals[key_name] = ev
                entry.update(map50_95=ev.result.map50_95, map50=ev.result.map50, images=ev.result.images,
                             per_class=ev.result.as_dict(class_names)["per_class"], decode_ms=ev.decode_ms)
            entry["latency_ms"] = time_runner(runner, canvas, n=latency_runs)
            fpath = work / "model_fp32.tflite" if key_name == "fp32" else staging / f"model_{key_name}.tflite"
            entry["size_bytes"] = fpath.stat().st_size if key_name != "pytorch_fp32" else None
            results[key_name] = entry
            acc = f"mAP50-95 {entry['map50_95']:.4f} mAP50 {entry['map50']:.4f}, " if "map50_95" in entry else ""
            log(f"      {key_name:<13} {acc}{entry['latency_ms']:.1f} ms")
        ci = None
        if items and "quant" in evals:
            from builder.evaluate.metrics import ImageBoxes, paired_bootstrap

            gts = [ImageBoxes(it.boxes, it.classes) for it in items]
            ci = paired_bootstrap(gts, evals["pytorch_fp32"].detections, evals["quant"].detections, lm.num_classes)
            drop = results["quant"]["map50_95"] - results["pytorch_fp32"]["map50_95"]
            log(f"      INT8 vs PyTorch FP32: {drop * 100:+.2f} mAP50-95 points (95% CI {ci[0] * 100:+.2f} … {ci[1] * 100:+.2f}, paired bootstrap)")

        stages.start("golden self-test, manifest, report" + (", signature" if signing_key else ""))
        quant_runner = variant_runners["quant"]
        golden_in = to_input(calib[0], np.uint8, *(quant_runner._q or (None, None)))
        golden_out = quant_runner(calib[0])
        np.save(staging / "golden_input.npy", golden_in)
        # One flat uint8 vector: every output raveled in the order of manifest.outputs.
        np.save(staging / "golden_expected.npy", np.concatenate([o.reshape(-1) for o in golden_out]))
        inp_spec = tensor_spec(quant_runner._in)
        out_specs = [tensor_spec(d) for d in quant_runner._out]

        report = {
            "name": name, "version": version, "created": datetime.now(UTC).isoformat(),
            "checkpoint": str(model_path), "architecture": lm.architecture, "imgsz": size,
            "class_names": class_names, "dataset": str(dataset_path) if dataset_path else None,
            "calibration": {"source": str(calib_src), "images": len(calib), "seed": seed, "files": calib_names[:1000],
                            "per_tensor": per_tensor},
            "onnx_ops": hist, "parity": parity, "ranges": ranges, "readiness": ready, "edgetpu_compile": compiled,
            "edgetpu_command": edgetpu.compile_command(out / "model_quant.tflite", out),
            "variants": results, "threads": threads, "latency_runs": latency_runs,
            "int8_drop_ci95": list(ci) if ci else None,
            "timings_s": stages.timings,
        }
        write_report(staging, report)

        metrics: dict[str, VariantMetrics] = {}
        for k, e in results.items():
            metrics[k] = VariantMetrics(map50_95=e.get("map50_95"), map50=e.get("map50"), latency_ms=e.get("latency_ms"),
                                        size_bytes=e.get("size_bytes"), images=e.get("images"))
        files = [*BUNDLE_FILES, "golden_input.npy", "golden_expected.npy", "report.json", "report.md"]
        for extra in ("report.png", "edgetpu_compiler.log"):
            if (staging / extra).exists():
                files.append(extra)
        edgetpu_file = None
        if (staging / "model_edgetpu.tflite").exists():
            files.append("model_edgetpu.tflite")
            edgetpu_file = "model_edgetpu.tflite"
        manifest = Manifest(
            name=name,
            version=version,
            created=datetime.now(UTC),
            files=[file_entry(staging, f) for f in files],
            models=ModelFiles(cpu="model_quant.tflite", edgetpu=edgetpu_file),
            input=inp_spec,
            outputs=out_specs,
            class_names=class_names,
            layout=OutputLayout(decoder="yolo_nas_raw", num_classes=lm.num_classes, strides=lm.strides, reg_max=lm.reg_max),
            preprocess=preprocess,
            metrics=metrics,
            golden=GoldenTest(input="golden_input.npy", expected="golden_expected.npy", model="cpu"),
        )
        write_manifest(staging, manifest, signing_key)
        if keep_intermediate is not None:
            keep = Path(keep_intermediate)
            keep.mkdir(parents=True, exist_ok=True)
            for f in ("model_fp32.tflite", "body.onnx", "calib.npy"):
                shutil.copy2(work / f, keep / f)
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = stages.done()
    log(f"bundle written to {out} in {total:.0f} s" + (" (signed)" if signing_key else " (unsigned: edge-builder sign)"))
    return out
