"""Hard-example capture on the node (issue 15): the bounded ring, the reasons on real frames, the config.

Frames are the trained test bundle's real TFLite engine over a synthetic video (tests/helpers_flywheel.py).
Uploads to the real collector are in tests/test_collector_harvest.py.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import iou, wait_for
from helpers_flywheel import load_engine, video_results

from agent.capture import CaptureConfig, CaptureSink, build_capture
from agent.capture.meta import CaptureMeta
from agent.capture.reference import REFERENCE_FILE, ScoreReference
from agent.capture.ring import CaptureRing, RingError
from agent.capture.sink import frame_id
from agent.config import AgentConfig, ConfigError, load_config
from agent.inference.engine import Engine
from agent.inference.frames import FrameResult


@pytest.fixture(scope="module")
def engine(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = load_engine(trained_bundle, tmp_path_factory.mktemp("engine"))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def results(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> list[FrameResult]:
    return video_results(engine, tmp_path_factory.mktemp("video"))


def _meta(fid: str, image: bytes) -> CaptureMeta:
    return CaptureMeta(id=fid, node="node-1", camera="default", frame_ts=0.0, model_name="m", model_version=1,
                       reasons=["band"], detections=[], width=8, height=8, image_sha256=hashlib.sha256(image).hexdigest(),
                       image_size=len(image))


def _on_disk(root: Path) -> tuple[int, int]:
    """(frames, bytes) committed in the ring directory, as a reader of the disk sees them."""
    frames = total = 0
    for name in os.listdir(root):
        if name.startswith(".") or name == "upload_state.json":
            continue
        try:
            total += (root / name).stat().st_size
        except FileNotFoundError:
            continue  # evicted while we looked
        frames += name.endswith(".json")
    return frames, total


def test_the_ring_never_exceeds_its_caps_under_a_flood(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path / "ring", max_frames=15, max_bytes=150_000)
    stop = threading.Event()
    worst = [0, 0]

    def watch() -> None:
        while not stop.is_set():
            n, b = _on_disk(ring.root)
            worst[0], worst[1] = max(worst[0], n, ring.count), max(worst[1], b, ring.size())

    def flood(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for k in range(60):
            img = rng.integers(0, 256, int(rng.integers(2_000, 30_000)), dtype=np.uint8).tobytes()
            ring.put(_meta(f"{(seed * 1000 + k + 1) * 10**12:019d}-{seed:08x}", img), img)

    watcher = threading.Thread(target=watch)
    watcher.start()
    writers = [threading.Thread(target=flood, args=(s,)) for s in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    watcher.join()
    assert worst[0] <= 15 and worst[1] <= 150_000, worst
    assert ring.dropped == 240 - ring.count and ring.count >= 5
    with pytest.raises(RingError, match="exceeds the ring"):
        big = b"x" * 200_000
        ring.put(_meta(frame_id(1.0), big), big)
    # A restart finds the same frames; debris of a power cut (an image without metadata, a temp file) goes.
    (ring.root / f"{frame_id(2.0)}.jpg").write_bytes(b"half")
    (ring.root / ".x.json.123.tmp").write_bytes(b"tmp")
    again = CaptureRing(ring.root, max_frames=15, max_bytes=150_000)
    assert again.ids() == sorted(ring.ids()) and again.size() == ring.size()
    assert sorted(os.listdir(ring.root)) == sorted([f"{i}.json" for i in ring.ids()] + [f"{i}.jpg" for i in ring.ids()])
    smaller = CaptureRing(ring.root, max_frames=5, max_bytes=150_000)  # caps lowered in the config: oldest go
    assert smaller.ids() == sorted(ring.ids())[-5:]


def test_a_flood_of_uncertain_frames_is_rate_limited(results: list[FrameResult], tmp_path: Path) -> None:
    cfg = CaptureConfig(enabled=True, band=(0.0, 1.0), rate_per_min=6, burst=3, max_frames=50)
    sink = CaptureSink(cfg, CaptureRing(tmp_path / "ring", cfg.max_frames, cfg.max_bytes), "node-1")
    flood = [replace(r, frame=replace(r.frame, index=k)) for k, r in enumerate(results * 5)]  # 120 distinct frames
    kept = [sink.observe(r.frame.image, r, "default") for r in flood]
    assert sink.flush()
    assert sum(k is not None for k in kept) == 3 and sink.counters.rate_limited == len(kept) - 3
    assert sink.ring.count == 3 and sink.counters.written == 3
    sink.close()


def _closest_pair_gap(r: FrameResult) -> float:
    """The smallest score gap between two boxes of different classes on one object (inf: no such pair)."""
    gaps = [abs(a.score - b.score) for i, a in enumerate(r.detections) for b in r.detections[i + 1:]
            if a.class_id != b.class_id and iou(a.box, b.box) >= 0.5]
    return min(gaps, default=float("inf"))


def _split_margin(gaps: list[float]) -> float:
    """A close-classes margin with this model's frames on both sides of it, near the middle (how close its
    classes come moves from one training run to the next: one CI model had a pair within 0.1 on every frame)."""
    values = sorted(set(gaps))
    assert len(values) >= 2, f"every frame has the same closest-pair gap {values}: the video cannot split them"
    mid = sorted(gaps)[len(gaps) // 2]
    cuts = [(a + b) / 2 if b != float("inf") else min(1.0, a + 0.05) for a, b in zip(values, values[1:], strict=False)]
    return min(cuts, key=lambda c: abs(c - mid))


def test_reasons_on_real_frames(results: list[FrameResult], tmp_path: Path) -> None:
    # A band around the middle of this model's top scores (they move from one training run to the next), so
    # the video has frames on both sides of it.
    tops = sorted(max(d.score for d in r.detections) for r in results)
    lo, hi = tops[len(tops) // 4], tops[len(tops) // 2]
    margin = _split_margin([_closest_pair_gap(r) for r in results])
    cfg = CaptureConfig(enabled=True, band=(lo, hi), close_margin=margin, close_iou=0.5)
    sink = CaptureSink(cfg, CaptureRing(tmp_path / "ring", 100, 10**8), "node-1")
    band_seen, close_seen = set(), set()
    for r in results:
        why, drift = sink.reasons(r)
        top = max(d.score for d in r.detections)
        assert ("band" in why) == (lo <= top <= hi)
        pairs = [(a, b) for i, a in enumerate(r.detections) for b in r.detections[i + 1:]
                 if a.class_id != b.class_id and iou(a.box, b.box) >= 0.5 and abs(a.score - b.score) <= margin]
        assert ("close_classes" in why) == bool(pairs)
        band_seen.add("band" in why)
        close_seen.add("close_classes" in why)
        assert drift is None  # no reference shipped
    assert band_seen == {True, False} and close_seen == {True, False}  # the video exercises both outcomes
    calm = next(r for r in results if not sink.reasons(r)[0])
    assert sink.observe(calm.frame.image, calm, "default", disagreement=0.1) is None
    assert sink.observe(calm.frame.image, calm, "default", disagreement=0.8) == "disagreement"


def test_the_shadow_second_look_keeps_a_frame_once(results: list[FrameResult], tmp_path: Path) -> None:
    """The frame hook sees a frame first; the shadow then brings its disagreement (agent.inference.agreement)."""
    from agent.inference.agreement import disagreement

    cfg = CaptureConfig(enabled=True, band=(0.99, 1.0), close_margin=0.0)
    sink = CaptureSink(cfg, CaptureRing(tmp_path / "ring", 100, 10**8), "node-1")
    r = results[0]
    assert sink.observe(r.frame.image, r, "default") is None  # the live frame hook: nothing unsure
    d = disagreement(r.detections, r.detections[:1])  # a candidate that finds one object of several
    assert d > cfg.disagreement
    assert sink.observe(r.frame.image, r, "default", disagreement=d) == "disagreement"
    assert sink.observe(r.frame.image, r, "default", disagreement=1.0) is None  # never kept twice
    assert disagreement(r.detections, r.detections) == 0.0
    sink.close()


def test_a_zero_close_margin_turns_the_reason_off() -> None:
    """INT8 scores come in steps: two classes of one anchor often tie exactly, and "within 0" used to fire
    (a CI model tied, and the drift test, which sets 0 to mean off, saw close_classes)."""
    from agent.capture.reasons import close_classes
    from agent.protocol.messages import Detection

    box = (0.1, 0.1, 0.4, 0.4)
    tie = [Detection(box=box, class_id=0, class_name="circle", score=0.5),
           Detection(box=box, class_id=1, class_name="square", score=0.5)]
    assert close_classes(tie, 0.5, 0.05)
    assert not close_classes(tie, 0.5, 0.0)
    assert not close_classes([tie[0], tie[1].model_copy(update={"score": 0.6})], 0.5, 0.05)


def _scores(rs: list[FrameResult]) -> np.ndarray:
    return np.array([d.score for r in rs for d in r.detections])


def test_drift_against_the_bundle_reference(results: list[FrameResult], bundle_copy: Path, tmp_path: Path) -> None:
    half = len(results) // 2
    cfg = CaptureConfig(enabled=True, band=(0.99, 1.0), close_margin=0.0, drift_window=40, drift_threshold=0.3)
    # The model's own score distribution on the frames it is then shown: no drift.
    same = ScoreReference.from_scores(_scores(results[half:]), min_score=0.2, images=len(results) - half,
                                      source="second half")
    eng = load_engine(bundle_copy, tmp_path)  # verified first: the reference is replaced after (a test's own)
    (bundle_copy / REFERENCE_FILE).write_text(same.model_dump_json())
    sink = CaptureSink(cfg, CaptureRing(tmp_path / "ring", 100, 10**8), "node-1", score_floor=0.2)
    try:
        for r in results[half:]:
            r2 = FrameResult(r.frame, r.detections, r.stats, r.model_name, r.model_version, r.backend, engine=eng)
            assert "drift" not in (sink.observe(r.frame.image, r2, "default") or "")
        assert sink.drift is not None and sink.drift.last is not None and sink.drift.last < 0.3
        # A reference where the builder saw only confident detections: these frames drift from it.
        shifted = ScoreReference.from_scores(np.full(100, 0.97), min_score=0.2, images=50, source="confident")
        sink.set_reference(shifted)
        kept = [sink.observe(r.frame.image, r, "default") for r in results]
        assert sink.flush()
        drifted = [k for k in kept if k]
        windows = int((_scores(results) >= 0.2).sum()) // 40
        assert set(drifted) == {"drift"} and 1 <= len(drifted) <= windows  # one capture per full window
        meta = CaptureMeta.model_validate_json((sink.ring.root / f"{sink.ring.ids()[0]}.json").read_bytes())
        assert meta.reasons == ["drift"] and meta.drift is not None and meta.drift > 0.9
    finally:
        eng.close()
        sink.close()


def test_a_kept_frame_carries_its_metadata(results: list[FrameResult], tmp_path: Path) -> None:
    cfg = CaptureConfig(enabled=True, band=(0.0, 1.0), close_margin=0.0)
    sink = CaptureSink(cfg, CaptureRing(tmp_path / "ring", 10, 10**7), "node-7")
    r = results[3]
    assert sink.observe(r.frame.image, r, "garage") == "band"
    assert sink.flush()
    (fid,) = sink.ring.ids()
    item = sink.ring.read(fid)
    assert item is not None
    meta, jpeg = item
    assert (meta.node, meta.camera, meta.model_name, meta.model_version) == ("node-7", "garage", r.model_name,
                                                                             r.model_version)
    assert meta.detections == r.detections and meta.reasons == ["band"] and meta.frame_ts == r.frame.ts
    assert hashlib.sha256(jpeg).hexdigest() == meta.image_sha256
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == r.frame.image.shape
    sink.close()


def test_capture_config(tmp_path: Path) -> None:
    assert build_capture(AgentConfig(state_dir=tmp_path)) is None  # off by default
    token = tmp_path / "token"
    token.write_text("t" * 40 + "\n")
    p = tmp_path / "agent.toml"
    p.write_text(f'[capture]\nenabled = true\nband = [0.4, 0.7]\ncollector_url = "http://127.0.0.1:9/"\n'
                 f'credential_file = "{token}"\nmax_frames = 7\n')
    cfg = load_config(p, state_dir=tmp_path)
    sink = build_capture(cfg)
    assert sink is not None and sink.uploader is not None and sink.uploader.token == "t" * 40
    assert sink.ring.root == tmp_path / "capture" and sink.ring.max_frames == 7 and cfg.capture.band == (0.4, 0.7)
    sink.close()
    # A credential that cannot be read disables uploads, a ring that cannot be made disables capture: logged,
    # never fatal (the agent keeps inferring).
    token.unlink()
    sink = build_capture(cfg)
    assert sink is not None and sink.uploader is None
    (tmp_path / "file").write_text("")
    assert build_capture(cfg.model_copy(update={"capture": cfg.capture.model_copy(
        update={"dir": tmp_path / "file" / "ring"})})) is None
    for bad, key in (('band = [0.7, 0.4]', "capture.band"), ('collector_url = "ftp://x"', "capture.collector_url"),
                     ('collector_url = "http://x:1"', "credential_file")):
        p.write_text(f"[capture]\n{bad}\n")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(p)


def test_the_sink_as_a_pipeline_frame_hook(engine: Engine, tmp_path: Path) -> None:
    """What the daemon wires: build_capture(cfg) as a frame hook of the real pipeline on a real camera."""
    from agent.camera.capture import Camera
    from agent.camera.config import CameraConfig
    from agent.inference.config import DetectConfig
    from agent.inference.pipeline import Pipeline
    from builder.data.synth import make_video

    clip = tmp_path / "clip.avi"
    make_video(clip, n_frames=20, size=(320, 240), fps=20, classes=list(engine.bundle.manifest.class_names), seed=5,
               write_json=False)
    cfg = AgentConfig(state_dir=tmp_path, node_id="cam-3",
                      capture={"enabled": True, "band": [0.0, 1.0], "rate_per_min": 6000, "burst": 5})
    sink = build_capture(cfg)
    assert sink is not None
    cam = Camera(CameraConfig(source=str(clip), realtime=False, loop=True)).start()
    p = Pipeline(cam, engine, DetectConfig(score_threshold=0.2, class_agnostic_nms=False))
    p.add_frame_hook(sink)
    p.start()
    try:
        assert wait_for(lambda: sink.counters.written >= 5, 20), sink.counters
    finally:
        p.stop()
        cam.stop()
        sink.close()
    metas = [CaptureMeta.model_validate_json((sink.ring.root / f"{i}.json").read_bytes()) for i in sink.ring.ids()]
    assert len(metas) >= 5 and {m.node for m in metas} == {"cam-3"} and {m.camera for m in metas} == {"default"}
    assert all(m.detections and "band" in m.reasons and m.model_version == engine.model_version for m in metas)
    assert len({m.frame_index for m in metas}) == len(metas)  # distinct frames
