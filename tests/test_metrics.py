"""builder.evaluate.metrics: COCO mAP in numpy, cross-checked against pycocotools on the same boxes."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from builder.evaluate.metrics import ImageBoxes, coco_map, paired_bootstrap


def _random_set(seed: int, n_img: int = 25, nc: int = 3) -> tuple[list[ImageBoxes], list[ImageBoxes]]:
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n_img):
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (k, 2))
        wh = rng.uniform(8, 80, (k, 2))
        g = np.concatenate([xy, xy + wh], 1)
        gc = rng.integers(0, nc, k)
        # detections: jittered copies of some ground truths, some wrong classes, plus clutter
        keep = rng.random(k) < 0.8
        d = g[keep] + rng.normal(0, 4, (int(keep.sum()), 4))
        d = np.concatenate([np.minimum(d[:, :2], d[:, 2:] - 1), np.maximum(d[:, 2:], d[:, :2] + 1)], 1)  # valid boxes
        dc = np.where(rng.random(int(keep.sum())) < 0.9, gc[keep], rng.integers(0, nc, int(keep.sum())))
        m = int(rng.integers(0, 8))
        cxy = rng.uniform(0, 200, (m, 2))
        clutter = np.concatenate([cxy, cxy + rng.uniform(5, 60, (m, 2))], 1)
        d = np.concatenate([d, clutter])
        dc = np.concatenate([dc, rng.integers(0, nc, m)])
        ds = rng.uniform(0.01, 1.0, len(d))
        gts.append(ImageBoxes(g.astype(np.float32), gc))
        dets.append(ImageBoxes(d.astype(np.float32), dc, ds.astype(np.float32)))
    return gts, dets


def _pycocotools(gts: list[ImageBoxes], dets: list[ImageBoxes], nc: int) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, res = [], [], []
    aid = 1
    for i, (g, d) in enumerate(zip(gts, dets, strict=True)):
        images.append({"id": i, "width": 400, "height": 400})
        for b, c in zip(g.boxes, g.classes, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": aid, "image_id": i, "category_id": int(c), "bbox": [float(b[0]), float(b[1]), w, h],
                         "area": w * h, "iscrowd": 0})
            aid += 1
        for b, c, s in zip(d.boxes, d.classes, d.scores, strict=True):  # type: ignore[arg-type]
            res.append({"image_id": i, "category_id": int(c), "score": float(s),
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": k, "name": str(k)} for k in range(nc)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        dt = coco.loadRes(res)
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools(seed: int) -> None:
    pytest.importorskip("pycocotools")
    gts, dets = _random_set(seed)
    ours = coco_map(gts, dets, 3)
    ref = _pycocotools(gts, dets, 3)
    assert ours.map50_95 == pytest.approx(ref[0], abs=1e-9)
    assert ours.map50 == pytest.approx(ref[1], abs=1e-9)
    assert 0.05 < ours.map50_95 < 0.95  # a non-trivial case


def test_perfect_and_empty() -> None:
    g = [ImageBoxes(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), np.array([0, 1]))]
    perfect = [ImageBoxes(g[0].boxes.copy(), g[0].classes.copy(), np.array([0.9, 0.8]))]
    r = coco_map(g, perfect, 2)
    assert r.map50_95 == pytest.approx(1.0) and r.per_class == [pytest.approx(1.0), pytest.approx(1.0)]
    none = [ImageBoxes(np.zeros((0, 4), np.float32), np.zeros(0, int), np.zeros(0))]
    assert coco_map(g, none, 2).map50_95 == 0.0
    r3 = coco_map(g, perfect, 3)
    assert r3.per_class[2] is None  # a class with no ground truth does not count


def test_paired_bootstrap_brackets_the_difference() -> None:
    gts, dets = _random_set(3, n_img=30)
    lo, hi = paired_bootstrap(gts, dets, dets, 3, n=50)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.0)
    worse = [ImageBoxes(d.boxes + 6, d.classes, d.scores) for d in dets]
    lo2, hi2 = paired_bootstrap(gts, dets, worse, 3, n=100)
    assert hi2 < 0
