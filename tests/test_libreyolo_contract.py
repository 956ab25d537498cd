"""Pins what we use of libreyolo, so an upgrade that moves any of it fails here, loudly.

Users of the contract:
- builder/export/onnx_body.py (the TPU body): `backbone`, `neck`, `heads.head{1,2,3}` each returning (reg, cls) raw
  convolution outputs, `heads.fpn_strides`, `heads.num_classes`, `heads.reg_max`,
  `prep_model_for_conversion(full_fusion=True)` and the QARepVGG `fully_fused` flag;
- builder/train/checkpoint.py: `LibreYOLONASModel(config, nb_classes, reg_max)` and its state-dict keys;
- builder/train/libreyolo_adapter.py, the only module using libreyolo's private training API:
  `LibreYOLONAS(None, size, nb_classes)`, `.train(...)` importing `YOLONASTrainer` from
  `libreyolo.models.yolonas.trainer` at call time (the module-level swap), the trainer's private
  `_save_checkpoint` / `_update_best_state` / `_checkpoint_extra_metadata`, the epoch-callback event fields,
  and the shape of the validation metrics. The adapter tests below drive the adapter's trainer subclass
  against the installed libreyolo without training.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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

    from builder.train.libreyolo_adapter import SUPPORTED_VERSION

    assert SUPPORTED_VERSION == "1.6.0"
    assert libreyolo.__version__ == SUPPORTED_VERSION, "re-run the contract and accuracy checks before moving libreyolo"


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

    # builder.train.libreyolo_adapter swaps this module attribute; .train() must still import it at call time.
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
    from libreyolo.training.distributed import is_main_process, unwrap_model  # noqa: F401  (used by builder.train.libreyolo_adapter)
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
    """`LibreYOLONAS(None, ...)` (the adapter's build_yolonas) builds a fresh network with no download attempt."""
    from builder.train.libreyolo_adapter import build_yolonas
    from builder.train.network_guard import no_network

    with no_network() as attempts:
        w = build_yolonas("s", NC, "cpu")
    assert attempts == []
    assert w.model.heads.num_classes == NC
    assert type(w).__name__ == "LibreYOLONAS" and w.size == "s"


# ------------------------------------------------------------------- builder/train/libreyolo_adapter.py


class _Hooks:
    """Records what the adapter's trainer subclass reports (builder.train.libreyolo_adapter.TrainingHooks)."""

    def __init__(self, due: bool = False) -> None:
        self.due = due
        self.calls: list[tuple[Any, ...]] = []

    def on_checkpoint(self, epoch_done: int, loss: float, scores: Any) -> None:
        self.calls.append(("checkpoint", epoch_done, loss, tuple(scores)))

    def save_best(self, epoch_done: int, state_dict: dict[str, Any]) -> None:
        self.calls.append(("best", epoch_done, sorted(state_dict)))

    def full_save_due(self, epoch_done: int, epochs: int, save_period: int) -> bool:
        self.calls.append(("due", epoch_done, epochs, save_period))
        return self.due

    def on_full_saved(self, last_pt: Path) -> None:
        self.calls.append(("full", last_pt))

    def extra_metadata(self, epoch_done: int, best_epoch: int) -> dict[str, Any]:
        self.calls.append(("extra", epoch_done, best_epoch))
        return {"edge_fleet_meta": {"epoch": epoch_done}}

    def on_epoch(self, record: Any) -> None:
        self.calls.append(("epoch", record))


def _val_metrics(map50: float, map50_95: float) -> dict[str, Any]:
    """What libreyolo's detection validation hands `_save_checkpoint` (BaseTrainer._validate_epoch)."""
    return {"mAP50": map50, "mAP50_95": map50_95, "best_metric": map50_95, "best_metric_key": "metrics/mAP50-95",
            "metrics": {"metrics/mAP50": map50, "metrics/mAP50-95": map50_95, "metrics/precision": 0.5}}


def _bare_trainer(hooks: _Hooks, weights_dir: Path) -> Any:
    """The adapter's trainer subclass without __init__: just the state the overridden hooks read."""
    from builder.train.libreyolo_adapter import edge_trainer_class

    cls = edge_trainer_class(hooks, weights_dir)
    t = cls.__new__(cls)
    t.best_epoch, t.best_mAP50_95, t.best_mAP50, t.patience_counter = 0, 0.0, 0.0, 0
    t.model = torch.nn.Linear(2, 1)
    t.ema_model = SimpleNamespace(ema=torch.nn.Linear(2, 3))
    t.config = SimpleNamespace(epochs=10, save_period=0)
    t.wrapper_model = None
    return t


def test_adapter_overrides_match_libreyolo_private_api(tmp_path: Path) -> None:
    """Every private method the adapter overrides still exists in BaseTrainer with the same parameters."""
    from libreyolo.models.yolonas.trainer import YOLONASTrainer
    from libreyolo.training.trainer import BaseTrainer

    from builder.train.libreyolo_adapter import edge_trainer_class

    cls = edge_trainer_class(_Hooks(), tmp_path)
    assert cls.__mro__[1] is YOLONASTrainer
    overridden = sorted(n for n, v in vars(cls).items() if callable(v) and n.startswith("_") and not n.startswith("__"))
    assert overridden == ["_checkpoint_extra_metadata", "_save_checkpoint"]
    for name in overridden:
        assert name in vars(BaseTrainer), f"BaseTrainer.{name} is gone: the adapter's override is dead code"
        ours = list(inspect.signature(getattr(cls, name)).parameters)
        theirs = list(inspect.signature(getattr(BaseTrainer, name)).parameters)
        assert ours == theirs, f"BaseTrainer.{name}{theirs} changed; the adapter overrides {ours}"
    assert list(inspect.signature(BaseTrainer._update_best_state).parameters) == ["self", "epoch", "val_metrics"]


def test_adapter_checkpoint_hook_uses_libreyolo_best_state(tmp_path: Path) -> None:
    """`_save_checkpoint` through the adapter: libreyolo's own best-state bookkeeping, EMA weights to save_best."""
    hooks = _Hooks()
    t = _bare_trainer(hooks, tmp_path)
    t._save_checkpoint(0, 1.5, _val_metrics(0.6, 0.4))  # is_best=None: libreyolo's _update_best_state decides
    assert (t.best_epoch, t.best_mAP50, t.best_mAP50_95, t.patience_counter) == (1, 0.6, 0.4, 0)
    assert hooks.calls == [("checkpoint", 1, 1.5, (0.6, 0.4)), ("best", 1, ["bias", "weight"]), ("due", 1, 10, 0)]
    hooks.calls.clear()
    t._save_checkpoint(1, 1.2, _val_metrics(0.5, 0.3))  # worse: not best, patience counts
    assert (t.best_epoch, t.patience_counter) == (1, 1)
    assert hooks.calls == [("checkpoint", 2, 1.2, (0.5, 0.3)), ("due", 2, 10, 0)]
    hooks.calls.clear()
    t._save_checkpoint(2, 1.1, None, is_best=False)  # an epoch without validation
    assert hooks.calls == [("checkpoint", 3, 1.1, (None, None)), ("due", 3, 10, 0)]


def test_adapter_extra_metadata_extends_libreyolo(tmp_path: Path) -> None:
    hooks = _Hooks()
    t = _bare_trainer(hooks, tmp_path)
    t._save_checkpoint(4, 1.0, _val_metrics(0.7, 0.5), is_best=True)
    t.best_epoch = 5
    extra = t._checkpoint_extra_metadata()  # libreyolo's own part is {} for a wrapper without input profile
    assert extra == {"edge_fleet_meta": {"epoch": 5}}
    assert hooks.calls[-1] == ("extra", 5, 5)


def test_adapter_trainer_swap_is_scoped(tmp_path: Path) -> None:
    import libreyolo.models.yolonas.trainer as trainer_mod

    from builder.train.libreyolo_adapter import edge_trainer_class, use_trainer

    orig = trainer_mod.YOLONASTrainer
    cls = edge_trainer_class(_Hooks(), tmp_path)
    with use_trainer(cls):
        assert trainer_mod.YOLONASTrainer is cls
    assert trainer_mod.YOLONASTrainer is orig
    with pytest.raises(RuntimeError), use_trainer(cls):
        raise RuntimeError("training failed")
    assert trainer_mod.YOLONASTrainer is orig


def test_adapter_reads_the_epoch_event() -> None:
    from libreyolo.training.callbacks import TrainEpochEvent

    from builder.train.libreyolo_adapter import epoch_record

    ev = TrainEpochEvent(
        epoch=3, total_epochs=10, model_family="yolonas", model_size="s", task="detect", save_dir="x",
        train_loss=2.5, train_loss_items={"cls": 1.0, "iou": 0.5, "dfl": 1.0}, lr={"group0": 1e-3},
        val_metrics={"metrics/mAP50": 0.6, "metrics/mAP50-95": 0.4}, validated=True, is_best=True,
        current_metric=0.4, current_metric_name="metrics/mAP50-95", best_metric=0.4,
        best_metric_name="metrics/mAP50-95", best_epoch=3, epoch_seconds=7.0,
    )
    rec = epoch_record(ev)
    assert (rec.epoch, rec.train_loss, rec.cls, rec.iou, rec.dfl) == (3, 2.5, 1.0, 0.5, 1.0)
    assert (rec.map50, rec.map50_95, rec.lr, rec.seconds, rec.best) == (0.6, 0.4, 1e-3, 7.0, True)
    unvalidated = epoch_record(dataclasses.replace(ev, validated=False, val_metrics={}, is_best=False))
    assert unvalidated.map50 is None and unvalidated.map50_95 is None and not unvalidated.best


def test_only_the_adapter_touches_libreyolo_training_internals() -> None:
    root = Path(__file__).resolve().parents[1]
    private = ("_save_checkpoint", "_update_best_state", "_checkpoint_extra_metadata", "YOLONASTrainer",
               "libreyolo.training")
    users = sorted(
        str(p.relative_to(root)) for base in ("builder", "agent") for p in (root / base).rglob("*.py")
        if any(name in p.read_text() for name in private)
    )
    assert users == ["builder/train/libreyolo_adapter.py"]
