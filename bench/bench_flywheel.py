"""The flywheel end to end (issue 15's acceptance): a node's unsure frames become the next model.

1. v1 is the shared test model (tests/fixtures/build_test_bundle.py: synthetic shapes at 128 px), trained
   without the "hard" slice: the same scenes at a tenth to a fifth of the light, with sensor noise
   (builder.data.synth_slices).
2. A real `edge-agent run` daemon (CPU backend, v1) watches a video of normal and dim scenes with capture on;
   the frames it is unsure about (reasons recorded) go to `edge-builder collect` over HTTP when a retained
   MQTT request asks.
3. `edge-builder harvest` pulls them into a YOLO dataset with v1's FP32 pseudo-labels; the review runs through
   the review page's HTTP API, scripted: the "person" recognises each frame's scene and draws its true boxes
   (rejecting frames of a scene already labelled, as a person would skip a duplicate).
4. `edge-builder train --pretrained v1` fine-tunes on the original training set plus the accepted frames;
   `edge-builder convert` makes bundle v2.
5. v1 and v2's INT8 models (what a CPU node runs) are graded on held-out scenes never shown to the node:
   normal and dim, paired bootstrap 95 % intervals of the mAP50-95 change.
6. `edge-builder shadow start` runs v2 beside v1 on the node's live frames and waits for its agreement report;
   `edge-builder publish` then ships v2 and the node commits it after its trial.

Targets: the dim-slice gain exceeds the half-width of its interval; the normal slice loses at most 1 point;
captures carry reasons; the shadow report arrives with compared frames; the node commits v2. Exit 3 on a miss.

    python bench/bench_flywheel.py [--epochs 20] [--scenes 240] [--test 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from targets import RESULTS, Target, finish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_shadow import default_bundle  # noqa: E402
from flywheel_fleet import NODE, PREFIX, TOKEN, Fleet, cli, node_toml, wait_for  # noqa: E402

from builder.data.layout import Item  # noqa: E402
from builder.data.synth_slices import Scene, nearest_scene, render_scenes, write_images, write_slideshow  # noqa: E402
from builder.evaluate.evaluator import evaluate_runner  # noqa: E402
from builder.evaluate.metrics import ImageBoxes, coco_map, paired_bootstrap  # noqa: E402
from builder.evaluate.runners import TFLiteRunner  # noqa: E402

OUT = RESULTS / "flywheel.json"
VIDEO_SEED, TEST_SEED = 5_000_000, 9_000_000  # scene seeds far from the dataset's (seed * 7_919_993 + i)
NORMAL_MAX_LOSS = 0.01  # mAP50-95, as a fraction: "without losing more than 1 point elsewhere"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--v1", type=Path, help="the v1 test-bundle dir (bundle/, keys/, trusted/, dataset/, output/)")
    ap.add_argument("--scenes", type=int, default=240, help="scenes in the node's video, half of them dim")
    ap.add_argument("--test", type=int, default=200, help="held-out scenes per slice (normal, dim)")
    ap.add_argument("--epochs", type=int, default=20, help="fine-tune epochs")
    ap.add_argument("--fps", type=float, default=8.0, help="the video's frame rate")
    ap.add_argument("--band", type=float, nargs=2, default=(0.1, 0.6), help="capture band (top score)")
    ap.add_argument("--keep", type=Path, help="work here and keep everything (default: a temp dir, removed)")
    ap.add_argument("--out", type=Path, default=OUT)
    return ap.parse_args()


def alternating(n: int, block: int = 4) -> list[bool]:
    """Blocks of normal and dim scenes, so both run through the node all along the video."""
    return [(i // block) % 2 == 1 for i in range(n)]


# ------------------------------------------------------------------------------------------ node part


def capture_on_node(fleet: Fleet, v1: Path, video: Path, seconds: float, band: tuple[float, float]) -> dict[str, Any]:
    """v1 watches the video for `seconds` with capture on; then one upload request; the upload report."""
    (fleet.work / "collector.token").write_text(cli("collect", "add-node", NODE, "--dir", fleet.collected).strip())
    fleet.start_collector()
    cfg = node_toml(fleet.work, fleet.broker, v1 / "bundle", v1 / "trusted", video, fleet.collector_url,
                    score_threshold=band[0], band=band)
    fleet.start_node(cfg)
    wait_for(lambda: fleet.watch.json("telemetry"), 120, "telemetry from the node")
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        if not fleet.node_alive():
            raise RuntimeError("the node died:\n" + fleet.agent_log_tail())
        time.sleep(1)
    fleet.watch.publish(f"{PREFIX}/capture/upload", {"request_id": "flywheel-1"})

    def done() -> dict[str, Any] | None:
        st = fleet.watch.json("capture/status")
        return st if st and st.get("request_id") == "flywheel-1" and st.get("finished_at") else None

    return wait_for(done, 300, "a finished upload report")


def captured_meta(collected: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((collected / "frames" / NODE).glob("*.json"))]


# ---------------------------------------------------------------------------------------- review part


def _api(url: str, body: dict[str, Any] | None = None) -> Any:
    origin = "/".join(url.split("/")[:3])  # a POST must come from the page's own origin, as the browser's would
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                                          "Origin": origin})
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
    return json.loads(data) if r.headers.get_content_type() == "application/json" else data


def scripted_review(base: str, scenes: list[Scene], max_mad: float = 12.0) -> dict[str, int]:
    """Through the page's API: each frame gets its scene's true boxes; duplicates and unknowns are rejected."""
    counts = {"corrected": 0, "accepted": 0, "rejected_duplicate": 0, "rejected_unmatched": 0}
    seen: set[int] = set()
    for it in _api(f"{base}/api/review/items")["items"]:
        key = it["key"]
        raw = _api(f"{base}/api/review/image?key={key}")
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        scene, mad = nearest_scene(img, scenes)
        if mad > max_mad or scene.seed in seen:
            _api(f"{base}/api/review/item?key={key}", {"action": "reject"})
            counts["rejected_unmatched" if mad > max_mad else "rejected_duplicate"] += 1
            continue
        seen.add(scene.seed)
        h, w = img.shape[:2]
        boxes = [{"class_id": int(c), "box": [b[0] / w, b[1] / h, b[2] / w, b[3] / h]}
                 for b, c in zip(scene.boxes.tolist(), scene.classes.tolist(), strict=True)]
        got = _api(f"{base}/api/review/item?key={key}", {"action": "correct", "boxes": boxes})
        counts[got["status"]] += 1
    return counts


# ---------------------------------------------------------------------------------------- train part


def grown_dataset(work: Path, v1: Path, harvest: Path) -> Path:
    """One data.yaml over the original dataset and the reviewed harvest (docs/FLYWHEEL.md, "Fine-tune")."""
    orig = v1 / "dataset"
    names = json.loads((v1 / "bundle" / "manifest.json").read_text())["class_names"]
    val = [str(orig / "images" / "val")]
    if (harvest / "val.txt").exists() and (harvest / "val.txt").read_text().strip():
        val.append(str(harvest / "val.txt"))
    yaml = work / "grown" / "data.yaml"
    yaml.parent.mkdir(parents=True, exist_ok=True)
    yaml.write_text(json.dumps({"train": [str(orig / "images" / "train"), str(harvest / "train.txt")],
                                "val": val, "nc": len(names), "names": names}, indent=1) + "\n")
    return yaml.parent


def fine_tune_and_convert(work: Path, v1: Path, grown: Path, epochs: int) -> Path:
    ckpt1 = next((v1 / "output").rglob("ckpt_best.pth"))
    cli("train", "--dataset_path", grown, "--pretrained", ckpt1, "--experiment_name", "shapes_v2",
        "--epochs", epochs, "--batch_size", 8, "--imgsz", 128, "--workers", 0,
        "--output_dir", work / "output", log=work / "train.log")
    ckpt2 = work / "output" / "checkpoints" / "shapes_v2" / "ckpt_best.pth"
    cli("convert", "--model_path", ckpt2, "--model_type", "yolo_nas", "--output_formats", "tflite",
        "--calibration_dir", v1 / "dataset" / "images" / "train", "--out", work / "bundle_v2",
        "--name", "shapes", "--version", 2, "--key", v1 / "keys" / "fleet.key", "--dataset_path", grown,
        log=work / "convert.log")
    return work / "bundle_v2"


# ------------------------------------------------------------------------------------------ grade part


def grade(model: Path, items: list[Item], num_classes: int) -> list[ImageBoxes]:
    return evaluate_runner(TFLiteRunner(model, threads=2), items, num_classes).detections


def slice_items(scenes: list[Scene], folder: Path) -> list[Item]:
    paths = write_images(scenes, folder)
    return [Item(p, sc.boxes, sc.classes, sc.image.shape[1], sc.image.shape[0])
            for p, sc in zip(paths, scenes, strict=True)]


def compare(v1: Path, v2: Path, slices: dict[str, list[Item]], num_classes: int) -> dict[str, Any]:
    """v1 vs v2 INT8 per slice: mAP50-95 and mAP50 of each, the change and its paired 95 % interval."""
    out: dict[str, Any] = {}
    for name, items in slices.items():
        gts = [ImageBoxes(it.boxes, it.classes) for it in items]
        d1, d2 = grade(v1, items, num_classes), grade(v2, items, num_classes)
        m1, m2 = coco_map(gts, d1, num_classes), coco_map(gts, d2, num_classes)
        lo, hi = paired_bootstrap(gts, d1, d2, num_classes, n=1000)
        out[name] = {"images": len(items), "objects": int(sum(len(it.classes) for it in items)),
                     "v1": {"map50_95": m1.map50_95, "map50": m1.map50},
                     "v2": {"map50_95": m2.map50_95, "map50": m2.map50},
                     "change_map50_95": m2.map50_95 - m1.map50_95, "change_ci95": [lo, hi],
                     "ci95_half_width": (hi - lo) / 2}
        print(f"{name:>6}: mAP50-95 v1 {m1.map50_95:.3f} -> v2 {m2.map50_95:.3f} "
              f"({(m2.map50_95 - m1.map50_95) * 100:+.1f} points, 95% CI {lo * 100:+.1f} … {hi * 100:+.1f}); "
              f"mAP50 {m1.map50:.3f} -> {m2.map50:.3f}", flush=True)
    return out


# ------------------------------------------------------------------------------------- shadow + ship


def shadow_then_publish(fleet: Fleet, v1: Path, v2: Path, frames: int = 20) -> dict[str, Any]:
    common = ["--node", NODE, "--broker", fleet.broker.url, "--prefix", PREFIX]
    shadow_out = cli("shadow", "start", v2, *common, "--key", v1 / "keys" / "fleet.key",
                     "--http-base", fleet.files.base_url, "--upload", fleet.files.root, "--rate", 2,
                     "--frames", frames, "--id", "flywheel-v2", "--wait", 300)
    report = json.loads(cli("shadow", "status", *common, "--json"))
    cli("shadow", "stop", *common)
    cli("publish", v2, "--broker", fleet.broker.url, "--upload", fleet.files.root, "--http-base",
        fleet.files.base_url, "--target", f"node:{NODE}", "--key", v1 / "keys" / "fleet.key", "--prefix", PREFIX)

    def settled() -> dict[str, Any] | None:
        st = fleet.watch.json("update")
        final = {"committed", "rolled_back", "rejected", "failed"}
        return st if st and st.get("version") == 2 and st.get("state") in final else None

    update = wait_for(settled, 300, "v2's update to settle on the node")
    states = [s.get("state") for s in fleet.watch.all_json("update") if s.get("version") == 2]
    return {"shadow_cli": shadow_out.strip().splitlines()[-3:], "shadow_report": report, "update": update,
            "update_states": states}


# ------------------------------------------------------------------------------------------------ main


def v1_dir(arg: Path | None) -> Path:
    return arg if arg is not None else default_bundle().parent


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    v1 = v1_dir(args.v1)
    names = json.loads((v1 / "bundle" / "manifest.json").read_text())["class_names"]
    t0 = time.monotonic()
    video_scenes = render_scenes([VIDEO_SEED + i for i in range(args.scenes)], 128, names, alternating(args.scenes))
    video = write_slideshow(video_scenes, work / "camera.avi", args.fps, repeat=2)
    seconds = 2 * args.scenes / args.fps + 5  # one pass, and the capture writer's queue drains
    fleet = Fleet(work)
    try:
        upload = capture_on_node(fleet, v1, video, seconds, tuple(args.band))
        meta = captured_meta(fleet.collected)
        cli("harvest", "--collected", fleet.collected, "--out", work / "harvest", "--checkpoint",
            next((v1 / "output").rglob("ckpt_best.pth")), log=work / "harvest.log")
        review = scripted_review(fleet.start_collector(review=work / "harvest"), video_scenes)
        fleet.stop_collector()
        print(f"captured {len(meta)} frames, review {review}", flush=True)
        v2 = fine_tune_and_convert(work, v1, grown_dataset(work, v1, work / "harvest"), args.epochs)
        test = {name: slice_items(render_scenes([TEST_SEED + k * 100_000 + i for i in range(args.test)], 128, names,
                                                [k == 1] * args.test), work / "test" / name)
                for k, name in enumerate(("normal", "dim"))}
        grades = compare(v1 / "bundle" / "model_quant.tflite", v2 / "model_quant.tflite", test, len(names))
        ship = shadow_then_publish(fleet, v1, v2)
    finally:
        fleet.close()
    reasons: dict[str, int] = {}
    for m in meta:
        for r in m.get("reasons", []):
            reasons[r] = reasons.get(r, 0) + 1
    hard_share = sum(nearest_scene(cv2.imread(str(fleet.collected / "frames" / NODE / f"{m['id']}.jpg")),
                                   video_scenes)[0].hard for m in meta) / max(1, len(meta))
    return {"benchmark": "flywheel", "v1": str(v1), "scenes": args.scenes, "epochs": args.epochs,
            "band": list(args.band), "upload": upload, "captured": len(meta), "captured_reasons": reasons,
            "captured_without_reason": sum(not m.get("reasons") for m in meta), "captured_dim_share": hard_share,
            "review": review, "slices": grades, **ship, "seconds": time.monotonic() - t0}


def targets(res: dict[str, Any]) -> list[Target]:
    dim, normal = res["slices"]["dim"], res["slices"]["normal"]
    rep = res["shadow_report"] or {}
    agreement = rep.get("agreement") or {}
    return [
        Target("dim_gain_minus_ci_half_width", dim["change_map50_95"] - dim["ci95_half_width"], 0.0, at_most=False),
        Target("normal_change_map50_95", normal["change_map50_95"], -NORMAL_MAX_LOSS, at_most=False),
        Target("captured_frames", float(res["captured"]), 1, at_most=False),
        Target("captured_without_reason", float(res["captured_without_reason"]), 0, at_most=True),
        Target("shadow_frames_compared", float(agreement.get("frames", 0)), 1, at_most=False),
        Target("v2_committed", float(res["update"].get("state") == "committed"), 1, at_most=False),
    ]


def main() -> int:
    args = parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="flywheel-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        res = run(args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return finish(res, targets(res), args.out)


if __name__ == "__main__":
    sys.exit(main())
