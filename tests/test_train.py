"""edge-builder train on libreyolo: the guide's Step 1 command, checkpoints, resume, no network, accuracy."""

from __future__ import annotations

import argparse
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("libreyolo")

from builder.data.synth import make_dataset  # noqa: E402
from builder.train.checkpoint import CheckpointError, load_checkpoint, read_checkpoint  # noqa: E402
from builder.train.config import BEST_NAME, LATEST_NAME  # noqa: E402
from builder.train.network_guard import NetworkBlocked, no_network  # noqa: E402

pytestmark = pytest.mark.builder

# Measured (docs/TRAINING.md): with 40 epochs best mAP50 was 0.63, 0.62 and 0.51 in three runs (training on
# CPU is not bit-reproducible here), too close to 0.5; with 50 epochs 0.70 (above 0.6 from epoch
# 38 on); 6.5-7.5 s per epoch on 2 idle cores (~6 min in all). More images mattered more than resolution: 64 images at 160 px plateaued at mAP50 0.32-0.35.
ACCURACY_CONFIG = dict(n_train=128, n_val=32, imgsz=128, epochs=50, batch_size=8, lr0=2e-3)
MIN_MAP50 = 0.5


def _cli(argv: list[str]) -> int:
    from builder.commands import train as train_cmd

    parser = argparse.ArgumentParser(prog="edge-builder")
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_network_guard_blocks_outside_allows_loopback() -> None:
    original = socket.socket.connect
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    accepted: list[socket.socket] = []
    t = threading.Thread(target=lambda: accepted.append(srv.accept()[0]), daemon=True)
    t.start()
    with no_network() as attempts:
        with pytest.raises(NetworkBlocked):
            socket.create_connection(("192.0.2.10", 443), timeout=1)  # TEST-NET-1, never routed
        with pytest.raises(NetworkBlocked):
            socket.getaddrinfo("d2gjn4b69gu75n.cloudfront.net", 443)  # Deci's weight server
        c = socket.create_connection(("127.0.0.1", port), timeout=5)  # torch.distributed rendezvous stays open
        c.close()
    t.join(5)
    srv.close()
    for a in accepted:
        a.close()
    assert len(attempts) == 2 and "cloudfront" in attempts[1]
    assert socket.socket.connect is original  # restored


def test_load_checkpoint_rejects_foreign_and_corrupt(tmp_path: Path) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "garbage.pth")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not a YOLO-NAS checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")
    torch.save({"obj": threading.Lock}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pth")


@pytest.mark.slow
def test_guide_command_resume_and_checkpoint_contents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Step 1 of the guide with our command name, then --resume; tiny data, the point is the plumbing."""
    data = make_dataset(tmp_path / "ds", n_train=8, n_val=4, imgsz=64, seed=1)
    out = tmp_path / "output"
    base = ["train", "--dataset_path", str(data), "--no_pretrained", "--batch_size", "4",
            "--experiment_name", "tiny", "--imgsz", "64", "--workers", "0", "--output_dir", str(out)]
    assert _cli(base + ["--epochs", "1"]) == 0
    table = capsys.readouterr().out
    assert "mAP50-95" in table and "    1/1" in table
    exp = out / "checkpoints" / "tiny"
    model, meta = load_checkpoint(exp / BEST_NAME)
    assert meta.architecture == "yolo_nas_s" and meta.class_names == ["circle", "square", "triangle"]
    assert meta.imgsz == 64 and meta.num_classes == 3 and meta.epoch == 1 and meta.ema
    assert meta.libreyolo_version == "1.6.0" and meta.dataset_fingerprint and meta.preprocess.pad_value == 114
    assert not model.training and model.heads.num_classes == 3
    _, _, raw = read_checkpoint(exp / BEST_NAME)
    assert "optimizer" not in raw and set(raw) == {"edge_fleet_checkpoint", "meta", "state_dict"}
    _, _, raw_latest = read_checkpoint(exp / LATEST_NAME)
    assert {"optimizer", "ema", "train_model", "edge_fleet_meta"} <= set(raw_latest)
    # the same experiment again without --resume is refused, nothing overwritten
    assert _cli(base + ["--epochs", "1"]) == 1
    assert "--resume" in capsys.readouterr().err
    assert _cli(base + ["--epochs", "2", "--resume"]) == 0
    resumed = capsys.readouterr().out
    assert "resuming after epoch 1" in resumed and "    2/2" in resumed
    _, meta2 = load_checkpoint(exp / LATEST_NAME)
    assert meta2.epoch == 2
    # bounded disk: exactly our two checkpoints, libreyolo's copies removed
    pth = sorted(p.name for p in exp.rglob("*.p*t*") if p.suffix in (".pt", ".pth"))
    assert pth == [BEST_NAME, LATEST_NAME]
    assert (exp / "curves.png").read_bytes()[:4] == b"\x89PNG"


def _independent_map50(model: torch.nn.Module, data: Path, imgsz: int) -> float:
    """AP50 of the loaded checkpoint on the val split, from our own forward + NMS + pycocotools."""
    import cv2
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torchvision.ops import batched_nms

    from builder.data.dataset import load_dataset

    items = load_dataset(data).items("val")
    gt = {"images": [], "annotations": [], "categories": [{"id": i} for i in range(3)]}
    dets = []
    for img_id, it in enumerate(items):
        gt["images"].append({"id": img_id, "width": it.width, "height": it.height})
        for box, c in zip(it.boxes.tolist(), it.classes.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img_id, "category_id": c,
                                      "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        rgb = cv2.cvtColor(cv2.imread(str(it.image)), cv2.COLOR_BGR2RGB)
        assert rgb.shape[:2] == (imgsz, imgsz)  # synthetic images are already square at imgsz
        x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            (boxes, scores), _ = model(x)
        conf, cls = scores[0].max(dim=1)
        keep = conf > 0.01
        b, s, c = boxes[0][keep], conf[keep], cls[keep]
        idx = batched_nms(b, s, c, 0.6)[:100]
        for (x0, y0, x1, y1), sc, cl in zip(b[idx].tolist(), s[idx].tolist(), c[idx].tolist(), strict=True):
            dets.append({"image_id": img_id, "category_id": int(cl), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": sc})
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    if not dets:
        return 0.0
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1])


def test_trains_to_map50_on_synthetic_data(trained_bundle_dir: Path) -> None:
    """The shared test bundle's training run (tests/fixtures/build_test_bundle.py, ACCURACY_CONFIG) reached
    mAP50 >= 0.5; the same checkpoint then went through `convert` into the bundle the agent tests run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_test_bundle", Path(__file__).parent / "fixtures" / "build_test_bundle.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    CONFIG = mod.CONFIG
    assert CONFIG == ACCURACY_CONFIG
    data = trained_bundle_dir / "dataset"
    best = trained_bundle_dir / "output" / "checkpoints" / "testmodel" / BEST_NAME
    model, meta = load_checkpoint(best)
    assert meta.metrics.map50 is not None and meta.metrics.map50 >= MIN_MAP50, meta.metrics
    assert meta.architecture == "yolo_nas_s" and meta.imgsz == int(CONFIG["imgsz"])
    # the saved EMA weights really are the ones that scored: re-measure from the checkpoint alone
    ap50 = _independent_map50(model, data, int(CONFIG["imgsz"]))
    assert ap50 >= MIN_MAP50
    assert abs(ap50 - meta.metrics.map50) < 0.1, (ap50, meta.metrics.map50)


def test_warm_start_defaults_to_the_fine_tune_learning_rate(tmp_path: Path) -> None:
    """A warm start without --lr0 trains at FINETUNE_LR0 (a from-scratch rate undoes the checkpoint); an
    explicit --lr0 wins, and training from scratch keeps libreyolo's own default."""
    from builder.train.config import FINETUNE_LR0, TrainConfig

    base = dict(dataset_path=tmp_path, experiment_name="x")
    assert TrainConfig(**base, pretrained=tmp_path / "c.pth").start_lr == FINETUNE_LR0
    assert TrainConfig(**base, pretrained=tmp_path / "c.pth", lr0=3e-4).start_lr == 3e-4
    assert TrainConfig(**base).start_lr is None
    assert TrainConfig(**base, lr0=2e-3).start_lr == 2e-3
