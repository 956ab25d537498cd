"""Several cameras on one inference loop (issue 16): per-camera FPS, fairness and total rate for 1, 2 and 4
cameras, measured on the agent's own Pipeline and fair scheduler with the CPU backend.

Cameras are in-memory replays of a generated 30 fps video (agent.camera.replay: no decoding, so the figures
are the agent's, not the codec's). Every run offers the loop the same frames per second, --load × what it can
take (its measured rate), split evenly over the cameras: inference is saturated, as three 30 fps cameras
saturate a Pi's Coral. Figures per camera count:
- per-camera inference FPS; fairness = min / max camera FPS (1.0 = perfectly even);
- total inference FPS and its ratio to the one-camera run of the same round (rounds alternate the counts,
  so machine noise hits them alike; figures are medians over rounds).
Targets: fairness ≥ --min-fairness (0.8) and total ≥ --min-total-ratio (0.85) × one camera, for every count.
Exit status 3 when a target is missed.

    python bench/bench_multicamera.py [--bundle DIR] [--imgsz 320] [--cameras 1,2,4] [--seconds 3] [--rounds 3]
                                      [--load 1.5] [--min-fairness 0.8] [--min-total-ratio 0.85]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from targets import Target, finish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.camera.capture import Camera  # noqa: E402
from agent.camera.replay import ReplaySource  # noqa: E402
from agent.config import AgentConfig, CameraConfig  # noqa: E402
from agent.inference.engine import Engine  # noqa: E402
from agent.inference.feeds import Feed  # noqa: E402
from agent.inference.frames import FrameResult  # noqa: E402
from agent.inference.pipeline import Pipeline  # noqa: E402
from agent.security.bundle import Bundle  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "multicamera.json"


def replay_camera(frames: list[np.ndarray], fps: float) -> Camera:
    return Camera(CameraConfig(source="replay"), source_factory=lambda: ReplaySource(frames, fps))


def engine_rate(engine: Engine, frame: np.ndarray, seconds: float = 1.0) -> float:
    for _ in range(3):
        engine.infer(frame)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        engine.infer(frame)
        n += 1
    return n / (time.perf_counter() - t0)


def run(engine: Engine, frames: list[np.ndarray], cameras: int, total_fps: float, seconds: float) -> dict[str, float]:
    """Inference FPS per camera over a `seconds` window after a short settle."""
    feeds = [Feed(f"cam{i}", replay_camera(frames, total_fps / cameras)) for i in range(cameras)]
    stamps: list[tuple[float, str]] = []
    lock = threading.Lock()

    def hook(r: FrameResult) -> None:
        with lock:
            stamps.append((time.monotonic(), r.camera))

    p = Pipeline(feeds, engine)
    p.add_frame_hook(hook)
    for f in feeds:
        f.camera.start()
    p.start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
    finally:
        p.stop()
        for f in feeds:
            f.camera.stop()
    with lock:
        return {f.name: sum(1 for t, c in stamps if t0 <= t < t1 and c == f.name) / (t1 - t0) for f in feeds}


def measure(engine: Engine, frames: list[np.ndarray], counts: list[int], rounds: int, seconds: float,
            load: float) -> dict[str, Any]:
    offered = load * engine_rate(engine, frames[0])
    per: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    ratio: dict[int, list[float]] = {n: [] for n in counts}
    for r in range(rounds):
        single = sum(run(engine, frames, 1, offered, seconds).values())
        for n in counts:
            fps = run(engine, frames, n, offered, seconds) if n > 1 else {"cam0": single}
            per[n].append(fps)
            ratio[n].append(sum(fps.values()) / single if single else 0.0)
            print(f"round {r + 1}: {n} camera(s): total {sum(fps.values()):.1f} fps, per camera "
                  + ", ".join(f"{v:.1f}" for v in fps.values()), flush=True)
    out: dict[str, Any] = {"offered_fps": round(offered, 1), "counts": {}}
    for n in counts:
        fair = [min(f.values()) / max(f.values()) if max(f.values()) else 0.0 for f in per[n]]
        out["counts"][str(n)] = {
            "per_camera_fps": [round(statistics.median(f[c] for f in per[n]), 2) for c in per[n][0]],
            "total_fps": round(statistics.median(sum(f.values()) for f in per[n]), 2),
            "fairness_min_over_max": round(statistics.median(fair), 3),
            "total_vs_one_camera": round(statistics.median(ratio[n]), 3),
        }
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the test bundle)")
    ap.add_argument("--imgsz", type=int, default=320, help="model input size wanted for the default bundle (320)")
    ap.add_argument("--cameras", default="1,2,4", help="camera counts (1,2,4)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per run (3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, counts alternated (3)")
    ap.add_argument("--load", type=float, default=1.5, help="frames offered / the loop's rate (1.5)")
    ap.add_argument("--threads", type=int, default=1, help="CPU backend threads (1)")
    ap.add_argument("--min-fairness", type=float, default=0.8, help="target: min / max camera FPS (0.8)")
    ap.add_argument("--min-total-ratio", type=float, default=0.85, help="target: total / one-camera FPS (0.85)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    if args.bundle is None:
        from bench_pipeline import find_bundle

        args.bundle = find_bundle(args.imgsz)
    bundle = Bundle.load(args.bundle)
    m = bundle.manifest
    counts = sorted({int(c) for c in args.cameras.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = AgentConfig(backend={"prefer": "cpu", "detectors": {"cpu": {"threads": args.threads}}},
                          state_dir=Path(tmp), trusted_keys_dir=Path(tmp))
        engine = Engine.load(bundle, cfg)
        from builder.data.synth import make_video

        video = Path(tmp) / "scene.avi"
        make_video(video, n_frames=60, size=(320, 240), fps=30, classes=list(m.class_names), seed=0)
        cap = cv2.VideoCapture(str(video))
        frames = []
        while (got := cap.read())[0]:
            frames.append(got[1])
        cap.release()
        print(f"model {m.name} v{m.version} on {engine.device}; cameras {counts}; {args.rounds} rounds x "
              f"{args.seconds:g} s; offered load {args.load:g} x the loop's rate", flush=True)
        figures = measure(engine, frames, counts, args.rounds, args.seconds, args.load)
        engine.close()
    result = {"model": {"name": m.name, "version": m.version, "imgsz": engine.input_size[0]},
              "backend": {"name": "cpu", "threads": args.threads}, "rounds": args.rounds,
              "seconds_per_run": args.seconds, "load": args.load, **figures}
    aims: list[Target] = []
    for n, f in figures["counts"].items():
        print(f"{n} camera(s): per camera {f['per_camera_fps']} fps, total {f['total_fps']} fps, fairness "
              f"{f['fairness_min_over_max']}, total / one camera {f['total_vs_one_camera']}")
        if n != "1":
            aims.append(Target(f"{n} cameras: fairness min/max", f["fairness_min_over_max"], args.min_fairness,
                               at_most=False))
            aims.append(Target(f"{n} cameras: total / one camera", f["total_vs_one_camera"], args.min_total_ratio,
                               at_most=False, unit="x"))
    return finish(result, aims, args.out)


if __name__ == "__main__":
    sys.exit(main())
