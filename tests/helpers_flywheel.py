"""Real frames for the flywheel tests: the trained test bundle's TFLite engine over a synthetic video."""

from __future__ import annotations

import time
from pathlib import Path

import cv2

from agent.camera.frame import Frame
from agent.config import AgentConfig
from agent.inference.engine import Engine
from agent.inference.frames import FrameResult, FrameStats
from agent.security.bundle import Bundle
from builder.data.synth import make_video

# Per-class boxes (no cross-class NMS), so "two classes close" can be seen; a low threshold so the band can.
DETECT = {"score_threshold": 0.2, "class_agnostic_nms": False}


def load_engine(bundle: Path, tmp: Path) -> Engine:
    cfg = AgentConfig(state_dir=tmp / "state", trusted_keys_dir=tmp / "keys", detect=DETECT,
                      backend={"prefer": "cpu", "detectors": {"cpu": {"threads": 1}}})
    return Engine.load(Bundle.load(bundle), cfg)


def video_results(engine: Engine, tmp: Path, n_frames: int = 24, camera: str = "default") -> list[FrameResult]:
    """Every frame of a synthetic video (the scene tests/test_engine.py uses) through the real engine."""
    video = tmp / "clip.avi"
    make_video(video, n_frames=n_frames, size=(320, 240), fps=10, classes=list(engine.bundle.manifest.class_names),
               seed=5, write_json=False)
    cap = cv2.VideoCapture(str(video))
    out: list[FrameResult] = []
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                break
            frame = Frame(image=img, ts=time.time(), mono=time.monotonic(), index=len(out) + 1)
            dets, t = engine.infer_timed(img)
            stats = FrameStats(index=frame.index, frame_ts=frame.ts, capture_wait_s=0.0, preprocess_s=t.preprocess_s,
                               invoke_s=t.invoke_s, postprocess_s=t.postprocess_s, end_to_end_s=0.0,
                               detections=len(dets), backend=engine.backend_name, model_version=engine.model_version)
            out.append(FrameResult(frame=frame, detections=dets, stats=stats, model_name=engine.model_name,
                                   model_version=engine.model_version, backend=engine.backend_name, engine=engine,
                                   camera=camera))
    finally:
        cap.release()
    assert len(out) == n_frames
    return out
