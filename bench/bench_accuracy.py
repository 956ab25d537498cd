"""The 320 px accuracy reference (issue 14): FP32 vs INT8 on a held-out test split, with paired 95% intervals.

    python bench/bench_accuracy.py --work DIR [--imgsz 320] [--n-train 600] [--n-val 150] [--n-test 300]
        [--epochs 30] [--batch 16] [--model yolo_nas_s] [--lr0 X] [--calib-pool-size 1000] [--threads 2]
        [--out bench/results/accuracy_320.json] [--skip-train] [--dry-run]

Steps, each the `edge-builder` command a user types (bench/accuracy_steps.py; skipped when its output is in
DIR, so a run resumes, and `--dry-run` prints them): `synth photo` train/val/test data and a separate
calibration pool (calibration images are never test images); `train` (checkpoint picked on val; `--resume`
when history.json has not reached --epochs, refused when its train_config.json has other options); `calibration build` sets class_300 (default), class_100,
class_1000, random_300, scale_300 from the pool; the guide's `convert` into DIR/conv/default, then one
`convert` per option differing in one flag (per_tensor, logits class head, each other calibration set).

Evaluation, in-process with `edge-builder evaluate`'s code (builder.evaluate.evaluator, runners), all on the
TEST split: the PyTorch FP32 checkpoint (the reference), model_fp32 (when convert can keep it), model_cpu,
model_dynamic and model_quant of the default conversion, and model_quant of each option. Per-image
detections are cached in DIR/eval, so evaluation resumes too. Each row: mAP50-95, mAP50, the change from
PyTorch FP32 in points (INT8 - FP32: negative is a loss) and its paired-bootstrap 95% interval
(builder.evaluate.compare).

Targets (exit status 3 on a miss, bench/targets.py): PyTorch FP32 mAP50-95 >= 0.50; >= 300 test images;
the default model_quant loses <= 0.5 points (point estimate) and the upper end of its loss's 95% interval
is <= 1.0 point. Writes bench/results/accuracy_320.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from accuracy_steps import (  # noqa: E402  (bench/ on the path, as every benchmark)
    CALIB_SETS,
    CONVERSIONS,
    Config,
    calib_steps,
    convert_steps,
    data_steps,
    resume_mismatch,
    run_step,
    train_action,
    train_step,
    training_running,
    training_summary,
)
from targets import RESULTS, Target, finish  # noqa: E402

FP32_MIN_MAP = 0.50  # issue 14: a model worth quantizing
QUANT_MAX_LOSS_PTS = 0.5  # point estimate of the default model_quant's loss
QUANT_MAX_LOSS_CI_PTS = 1.0  # upper end of its 95% interval
MIN_TEST_IMAGES = 300
REFERENCE = "pytorch_fp32"
DEFAULT_VARIANTS = ("fp32", "cpu", "dynamic", "quant")
# The result's option groups: name -> the conversion whose model_quant it is.
OPTION_GROUPS = {
    "per_channel": "default", "per_tensor": "per_tensor",
    "calib_100": "class_100", "calib_300": "default", "calib_1000": "class_1000",
    "class": "default", "random": "random_300", "scale": "scale_300",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench" / "accuracy",
                    help="work directory; every step's output stays here, so a run resumes (.cache/bench/accuracy)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-val", type=int, default=150)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--model", default="yolo_nas_s")
    ap.add_argument("--lr0", type=float, default=None, help="train's --lr0 (default: train's own)")
    ap.add_argument("--calib-pool-size", type=int, default=1000, help="calibration pool images (1000)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for evaluation")
    ap.add_argument("--out", type=Path, default=RESULTS / "accuracy_320.json")
    ap.add_argument("--conversions", default=",".join(CONVERSIONS),
                    help=f"comma-separated subset of {', '.join(CONVERSIONS)} (default all; default always made)")
    ap.add_argument("--skip-train", action="store_true", help="never train: require the checkpoint")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and what each would do, run nothing")
    return ap.parse_args(argv)


def config(args: argparse.Namespace) -> Config:
    chosen = {c.strip() for c in args.conversions.split(",") if c.strip()} | {"default"}
    if unknown := chosen - set(CONVERSIONS):
        raise SystemExit(f"--conversions: unknown {', '.join(sorted(unknown))} (known: {', '.join(CONVERSIONS)})")
    return Config(work=args.work.resolve(), imgsz=args.imgsz, n_train=args.n_train, n_val=args.n_val,
                  n_test=args.n_test, epochs=args.epochs, batch=args.batch, model=args.model, lr0=args.lr0,
                  calib_pool_size=args.calib_pool_size,
                  conversions=tuple(c for c in CONVERSIONS if c in chosen))


# ------------------------------------------------------------------------------------------------ steps


def train(cfg: Config, skip_train: bool, logs: Path) -> dict[str, Any]:
    """Train, resume or skip (accuracy_steps.train_action); --skip-train only checks the checkpoint is there."""
    if skip_train:
        if not cfg.checkpoint.exists():
            raise SystemExit(f"--skip-train: no checkpoint {cfg.checkpoint}")
        return {"name": "train", "skipped": True, "command": None, "output": str(cfg.checkpoint)}
    step, action = train_step(cfg), train_action(cfg)
    if action != "skip" and (pids := training_running(cfg.work / "output")):
        raise SystemExit(f"a training into {cfg.work / 'output'} is running (pid {pids}): wait for it to finish")
    if action == "resume" and (diff := resume_mismatch(cfg)):
        raise SystemExit("will not resume a run with other options (pass the run's own): " + "; ".join(diff))
    return {**run_step(step, logs), "action": action}


def run_steps(cfg: Config, skip_train: bool) -> list[dict[str, Any]]:
    logs = cfg.work / "logs"
    records = [run_step(s, logs) for s in data_steps(cfg)]
    records.append(train(cfg, skip_train, logs))
    records += [run_step(s, logs) for s in calib_steps(cfg)]
    for s in convert_steps(cfg):
        try:
            records.append(run_step(s, logs))
        except RuntimeError as exc:
            if s.name == "convert_default":
                raise
            # One option failing must not cost the others (hours of work): its rows are left out, and said why.
            print(f"  {exc}", file=sys.stderr, flush=True)
            records.append({"name": s.name, "command": s.command(), "failed": True, "error": str(exc)[-1500:]})
    return records


def dry_run(cfg: Config) -> None:
    for s in [*data_steps(cfg), train_step(cfg), *calib_steps(cfg), *convert_steps(cfg)]:
        state = train_action(cfg) if s.name == "train" else ("skip" if s.done() else "run")
        print(f"[{state}] {s.command()}")


# ------------------------------------------------------------------------------------------- evaluation


def models(cfg: Config) -> dict[str, Path]:
    """Every TFLite file to evaluate, by row key "<conversion>.<variant>" (model_fp32 only when kept)."""
    out = {f"default.{v}": cfg.conversion("default") / f"model_{v}.tflite" for v in DEFAULT_VARIANTS if v != "fp32"}
    fp32 = cfg.intermediate("default") / "model_fp32.tflite"
    if fp32.exists():
        out["default.fp32"] = fp32
    out.update({f"{name}.quant": cfg.conversion(name) / "model_quant.tflite" for name in cfg.conversions
                if name != "default" and (cfg.conversion(name) / "manifest.json").exists()})
    return dict(sorted(out.items()))


def fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def save_detections(path: Path, source: str, images: list[str], dets: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, source=np.array(source), images=np.array(images),
             counts=np.array([len(d.boxes) for d in dets], dtype=np.int64),
             boxes=np.concatenate([np.asarray(d.boxes, np.float32).reshape(-1, 4) for d in dets]),
             classes=np.concatenate([np.asarray(d.classes, np.int64).reshape(-1) for d in dets]),
             scores=np.concatenate([np.asarray(d.scores, np.float32).reshape(-1) for d in dets]))
    tmp.replace(path)


def load_detections(path: Path, source: str, images: list[str]) -> list[Any] | None:
    """The cached detections when they are of this model file on these images, else None."""
    from builder.evaluate.metrics import ImageBoxes

    if not path.exists():
        return None
    z = np.load(path)
    if str(z["source"]) != source or list(z["images"]) != images:
        return None
    ends = np.cumsum(z["counts"])
    starts = ends - z["counts"]
    return [ImageBoxes(z["boxes"][a:b], z["classes"][a:b], z["scores"][a:b]) for a, b in zip(starts, ends, strict=True)]


def evaluate(key: str, path: Path, items: list[Any], num_classes: int, cfg: Config, threads: int) -> Any:
    """`edge-builder evaluate`'s evaluation of one model file on `items`, from the cache when it is current."""
    from builder.evaluate.evaluator import EvalResult, evaluate_runner
    from builder.evaluate.metrics import ImageBoxes, coco_map
    from builder.evaluate.runners import TFLiteRunner, TorchRunner, bundle_class_head
    from builder.export.loaded_model import load_model

    cache = cfg.work / "eval" / f"{key}.npz"
    names = [it.image.name for it in items]
    source = f"{fingerprint(path)}|{fingerprint(cfg.data / 'data.yaml')}"  # this model file, this dataset
    dets = load_detections(cache, source, names)
    if dets is not None:
        print(f"[skip] evaluate {key}: cached in {cache}", flush=True)
        gts = [ImageBoxes(it.boxes, it.classes) for it in items]
        return EvalResult(key, coco_map(gts, dets, num_classes), dets)
    print(f"evaluate {key}: {path}", flush=True)
    if path.suffix == ".tflite":
        # model_fp32 is kept outside the bundle: it has the default conversion's head.
        runner: Any = TFLiteRunner(path, threads, key, class_head=bundle_class_head(
            cfg.conversion(key.split(".")[0]) / "model_quant.tflite"))
    else:
        lm = load_model(path)  # at the checkpoint's own size, as convert makes the TFLite files
        runner = TorchRunner(lm.model, lm.imgsz, threads)
    ev = evaluate_runner(runner, items, num_classes)
    save_detections(cache, source, names, ev.detections)
    return ev


def evaluate_all(cfg: Config, threads: int) -> dict[str, Any]:
    """The reference and every model file on the test split; one row each (the reference's change is 0)."""
    from builder.evaluate.compare import drop_row
    from builder.evaluate.evaluator import load_dataset_items
    from builder.evaluate.metrics import ImageBoxes

    names, items = load_dataset_items(cfg.data, "test")
    gts = [ImageBoxes(it.boxes, it.classes) for it in items]
    ref = evaluate(REFERENCE, cfg.checkpoint, items, len(names), cfg, threads)
    rows: dict[str, Any] = {REFERENCE: {"model": str(cfg.checkpoint), "map50_95": ref.result.map50_95,
                                        "map50": ref.result.map50, "drop_map50_95_pts": 0.0, "drop_map50_pts": 0.0,
                                        "drop_map50_95_ci95_pts": None, "images": len(items)}}
    for key, path in models(cfg).items():
        ev = evaluate(key, path, items, len(names), cfg, threads)
        rows[key] = {"model": str(path), **drop_row(gts, ref, ev, len(names)), "images": len(items)}
    return {"images": len(items), "objects": int(sum(len(it.boxes) for it in items)), "class_names": names,
            "rows": rows}


# ------------------------------------------------------------------------------------------------ result


def group_rows(rows: dict[str, Any]) -> dict[str, Any]:
    """Rows keyed "<conversion>.<variant>" into the result's variants / heads / options tables; a row whose
    model was not made (model_fp32 not kept, a conversion left out or failed) is None."""
    variants = {REFERENCE: rows[REFERENCE], **{v: rows.get(f"default.{v}") for v in DEFAULT_VARIANTS}}
    heads = {"sigmoid": rows.get("default.quant"), "logits": rows.get("logits.quant")}
    options = {name: rows.get(f"{conv}.quant") for name, conv in OPTION_GROUPS.items()}
    return {"variants": variants, "heads": heads, "options": options}


def conversion_info(cfg: Config) -> dict[str, Any]:
    """Per conversion, from its report.json: time per stage, calibration images and coverage, parity."""
    out: dict[str, Any] = {}
    for name, (calib, flags) in CONVERSIONS.items():
        rep_path = cfg.conversion(name) / "report.json"
        if name not in cfg.conversions or not rep_path.exists():
            continue
        rep = json.loads(rep_path.read_text())
        cal = rep.get("calibration") or {}
        timings = rep.get("timings_s") or {}
        ranges = (rep.get("ranges") or {}).get("outputs") or []
        out[name] = {"calibration_set": calib, "flags": list(flags), "seconds": round(sum(timings.values()), 1),
                     "timings_s": timings, "calibration_images": cal.get("images"),
                     "per_tensor": cal.get("per_tensor"),
                     "coverage_per_stride": (cal.get("coverage") or {}).get("per_stride"),
                     "parity_max_abs_error": (rep.get("parity") or {}).get("max_abs_error"),
                     "class_outputs": [{k: r.get(k) for k in ("stride", "scale", "zero_point", "severity", "note")}
                                       for r in ranges if r.get("kind") == "cls"]}
    return out


def calibration_info(cfg: Config) -> dict[str, Any]:
    keep = ("strategy", "images", "images_per_class", "images_per_band", "objects_per_band")
    out = {}
    for name in CALIB_SETS:
        info = json.loads((cfg.calib_set(name) / "calibration.json").read_text())
        out[name] = {k: info.get(k) for k in keep}
    return out


def build_result(cfg: Config, steps: list[dict[str, Any]], ev: dict[str, Any]) -> dict[str, Any]:
    summary = cfg.data / "summary.json"
    return {
        "benchmark": "accuracy", "imgsz": cfg.imgsz, "split": "test", "images": ev["images"],
        "objects": ev["objects"], "class_names": ev["class_names"], "work": str(cfg.work),
        "reference": REFERENCE, "drop_sign": "model - PyTorch FP32, mAP points (100 x): negative is a loss",
        "data": json.loads(summary.read_text()) if summary.exists() else None,
        "training": training_summary(cfg.experiment), "calibration": calibration_info(cfg),
        "conversions": conversion_info(cfg), "steps": steps, **group_rows(ev["rows"]),
    }


def targets(result: dict[str, Any]) -> list[Target]:
    ref, quant = result["variants"][REFERENCE], result["variants"]["quant"]
    return [
        Target("PyTorch FP32 mAP50-95 (test split)", ref["map50_95"], FP32_MIN_MAP, at_most=False),
        Target("test images", float(result["images"]), MIN_TEST_IMAGES, at_most=False),
        Target("default model_quant mAP50-95 loss vs PyTorch FP32 (points)", 0.0 - quant["drop_map50_95_pts"],
               QUANT_MAX_LOSS_PTS, at_most=True),
        Target("default model_quant loss, upper end of the 95% interval (points)",
               0.0 - quant["drop_map50_95_ci95_pts"][0], QUANT_MAX_LOSS_CI_PTS, at_most=True),
    ]


def table_lines(result: dict[str, Any]) -> list[str]:
    """The three tables as text: each row's mAPs, change in points with its 95% interval, images."""
    lines = [f"accuracy, {result['imgsz']} px, test split ({result['images']} images, {result['objects']} objects); "
             "change = model - PyTorch FP32 in mAP points"]
    for group in ("variants", "heads", "options"):
        lines.append(f"\n{group:<14} {'mAP50-95':>9} {'mAP50':>7} {'d50-95':>7} {'95% CI':>17} {'d50':>7} {'images':>6}")
        for name, r in result[group].items():
            if r is None:
                lines.append(f"{name:<14} {'not measured':>9}")
                continue
            ci = r["drop_map50_95_ci95_pts"]
            shown = "reference" if ci is None else f"{ci[0]:+.2f} … {ci[1]:+.2f}"
            lines.append(f"{name:<14} {r['map50_95']:>9.4f} {r['map50']:>7.4f} {r['drop_map50_95_pts']:>+7.2f} "
                         f"{shown:>17} {r['drop_map50_pts']:>+7.2f} {r['images']:>6}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config(args)
    if args.dry_run:
        dry_run(cfg)
        return 0
    cfg.work.mkdir(parents=True, exist_ok=True)
    steps = run_steps(cfg, args.skip_train)
    result = build_result(cfg, steps, evaluate_all(cfg, args.threads))
    print("\n".join(table_lines(result)))
    return finish(result, targets(result), args.out)


if __name__ == "__main__":
    sys.exit(main())
