"""Pins what we use of libreyolo's internals, so an upgrade that moves any of it fails here, loudly.

Users of the contract:
- builder/export/onnx_body.py (the TPU body): `backbone`, `neck`, `heads.head{1,2,3}` each returning (reg, cls) raw
  convolution outputs, `heads.fpn_strides`, `heads.num_classes`, `heads.reg_max`,
  `prep_model_for_conversion(full_fusion=True)` and the QARepVGG `fully_fused` flag;
- builder/train/checkpoint.py: `LibreYOLONASModel(config, nb_classes, reg_max)` and its state-dict keys;
- builder/train/trainer.py: `LibreYOLONAS(None, size, nb_classes)`, `.train(...)` importing `YOLONASTrainer` from
  `libreyolo.models.yolonas.trainer` at call time, the trainer's `_save_checkpoint` /
  `_checkpoint_extra_metadata` hooks, the epoch-callback event fields, and the checkpoint keys we read.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("libreyolo")

pytestmark = pytest.mark.builder

NC = 3


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from libreyolo.models.yolonas.nn import LibreYOLONASModel

    torch.manual_seed(0)
    return LibreYOLONASModel(config="s", nb_classes=NC, reg_max=16).eval()


def test_version_pinned() -> None:
    import libreyolo

    assert libreyolo.__version__ == "1.6.0", "re-run the contract and accuracy checks before moving libreyolo"


def test_module_tree(model) -> None:  # type: ignore[no-untyped-def]
    from libreyolo.models.yolonas.nn import QARepVGGBlock

    for name in ("stem", "stage1", "stage2", "stage3", "stage4", "context_module"):
        assert hasattr(model.backbone, name), f"backbone.{name} moved"
    for name in ("neck1", "neck2", "neck3", "neck4"):
        assert hasattr(model.neck, name), f"neck.{name} moved"
    heads = model.heads
    assert tuple(heads.fpn_strides) == (8, 16, 32)
    assert heads.num_classes == NC and heads.reg_max == 16
    assert heads.proj_conv.flatten().tolist() == list(range(17))  # DFL bins 0..reg_max
    for i, width in zip((1, 2, 3), (64, 128, 256), strict=True):
        head = getattr(heads, f"head{i}")
        for sub in ("stem", "cls_convs", "reg_convs", "cls_pred", "reg_pred"):
            assert hasattr(head, sub), f"heads.head{i}.{sub} moved"
        assert isinstance(head.cls_pred, torch.nn.Conv2d) and head.cls_pred.out_channels == NC
        assert isinstance(head.reg_pred, torch.nn.Conv2d) and head.reg_pred.out_channels == 4 * 17
        assert head.cls_pred.in_channels == width and head.cls_pred.kernel_size == (1, 1)
    blocks = [m for m in model.modules() if isinstance(m, QARepVGGBlock)]
    assert len(blocks) > 20
    for attr in ("branch_3x3", "branch_1x1", "rbr_reparam", "post_bn", "partial_fusion", "full_fusion"):
        assert hasattr(blocks[0], attr), f"QARepVGGBlock.{attr} moved"
    assert hasattr(model, "prep_model_for_conversion") and hasattr(model, "fuse_reparam")


def test_head_outputs_and_forward(model) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        feats = model.neck(model.backbone(x))
        assert len(feats) >= 3
        for i, s in zip((1, 2, 3), (8, 16, 32), strict=True):
            reg, cls = getattr(model.heads, f"head{i}")(feats[i - 1])
            assert tuple(reg.shape) == (1, 68, 128 // s, 128 // s)
            assert tuple(cls.shape) == (1, NC, 128 // s, 128 // s)
        out = model(x)
    (boxes, scores), raw = out  # eval forward: decoded + raw predictions
    n_anchors = sum((128 // s) ** 2 for s in (8, 16, 32))
    assert tuple(boxes.shape) == (1, n_anchors, 4) and tuple(scores.shape) == (1, n_anchors, NC)
    assert len(raw) == 6


def test_full_fusion_is_exact(model) -> None:  # type: ignore[no-untyped-def]
    from libreyolo.models.yolonas.nn import QARepVGGBlock

    # Non-trivial BN statistics so the fusion really has something to fold.
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2, generator=g)
            mod.running_var.uniform_(0.5, 1.5, generator=g)
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
    m.eval()
    fused = copy.deepcopy(m)
    fused.prep_model_for_conversion(full_fusion=True)
    blocks = [b for b in fused.modules() if isinstance(b, QARepVGGBlock)]
    assert blocks and all(b.fully_fused for b in blocks)
    assert not any(hasattr(b, "post_bn") or hasattr(b, "branch_3x3") for b in blocks)
    x = torch.rand(2, 3, 96, 96, generator=g)
    with torch.no_grad():
        a = [t for pair in (getattr(m.heads, f"head{i}")(f) for i, f in zip((1, 2, 3), m.neck(m.backbone(x)), strict=False)) for t in pair]
        b = [t for pair in (getattr(fused.heads, f"head{i}")(f) for i, f in zip((1, 2, 3), fused.neck(fused.backbone(x)), strict=False)) for t in pair]
    for u, v in zip(a, b, strict=True):
        assert torch.allclose(u, v, atol=1e-3, rtol=1e-3), float((u - v).abs().max())


# Reference parameter counts. super-gradients publishes YOLO-NAS S/M/L (COCO, 80 classes) as 19.0M / 51.1M /
# 66.9M with the training-time branches; the issue measured S at 19.02M (3 classes) and 12.14M fully fused.
@pytest.mark.parametrize(
    ("size", "nc", "total", "fused", "tol"),
    [
        ("s", 3, 19.02e6, 12.14e6, 0.005e6),
        ("s", 80, 19.0e6, None, 0.06e6),
        ("m", 80, 51.1e6, None, 0.1e6),
        ("l", 80, 66.9e6, None, 0.1e6),
    ],
)
def test_parameter_counts(size: str, nc: int, total: float, fused: float | None, tol: float) -> None:
    from builder.train.checkpoint import build_model

    m = build_model(f"yolo_nas_{size}", nc)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - total) <= tol, f"yolo_nas_{size}: {n / 1e6:.3f}M parameters, reference {total / 1e6:.2f}M"
    if fused is not None:
        m.eval().prep_model_for_conversion(full_fusion=True)
        nf = sum(p.numel() for p in m.parameters())
        assert abs(nf - fused) <= tol, f"fused yolo_nas_{size}: {nf / 1e6:.3f}M, reference {fused / 1e6:.2f}M"


def test_training_hooks_exist() -> None:
    import libreyolo.models.yolonas.trainer as trainer_mod
    from libreyolo import LibreYOLONAS
    from libreyolo.training.callbacks import TrainEpochEvent
    from libreyolo.training.trainer import BaseTrainer

    # builder.train.trainer swaps this module attribute; .train() must still import it at call time.
    assert "from .trainer import YOLONASTrainer" in inspect.getsource(LibreYOLONAS.train)
    assert issubclass(trainer_mod.YOLONASTrainer, BaseTrainer)
    for hook in ("_save_checkpoint", "_checkpoint_extra_metadata", "_update_best_state"):
        assert hook in vars(BaseTrainer), f"BaseTrainer.{hook} moved"
    save_src = inspect.getsource(BaseTrainer._save_checkpoint)
    assert "self._checkpoint_extra_metadata()" in save_src and '"last.pt"' in save_src and '"best.pt"' in save_src
    assert 'self.ema_model.ema if self.ema_model' in save_src  # "model" = EMA weights
    assert "if is_best is None:" in save_src and "save_period" in save_src
    assert list(inspect.signature(BaseTrainer._save_checkpoint).parameters) == [
        "self", "epoch", "loss", "val_metrics", "is_best"]
    from libreyolo.training.distributed import is_main_process, unwrap_model  # noqa: F401  (used by builder.train.trainer)
    from libreyolo.training.ema import ModelEMA

    assert "ema" in inspect.getsource(ModelEMA.__init__)  # trainer.ema_model.ema is the EMA module
    fields = {f.name for f in dataclasses.fields(TrainEpochEvent)}
    assert {"epoch", "train_loss", "train_loss_items", "lr", "val_metrics", "validated", "is_best",
            "epoch_seconds"} <= fields
    params = inspect.signature(LibreYOLONAS.train).parameters
    for p in ("data", "epochs", "batch", "imgsz", "device", "workers", "project", "name", "resume", "callbacks",
              "amp", "patience"):
        assert p in params, f"LibreYOLONAS.train lost {p!r}"
    from libreyolo.training.config import YOLONASConfig

    cfg_fields = {f.name for f in dataclasses.fields(YOLONASConfig)}
    assert {"eval_interval", "save_period", "faster_coco_eval", "ema", "lr0"} <= cfg_fields


def test_construct_from_scratch_without_network() -> None:
    """`LibreYOLONAS(None, ...)` builds a fresh network with no download attempt."""
    from libreyolo import LibreYOLONAS

    from builder.train.trainer import no_network

    with no_network() as attempts:
        w = LibreYOLONAS(None, size="s", nb_classes=NC, device="cpu")
    assert attempts == []
    assert w.model.heads.num_classes == NC
