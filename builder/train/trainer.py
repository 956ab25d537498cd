"""Train YOLO-NAS S/M/L from scratch on libreyolo 1.6.0, and own everything around it.

What libreyolo does: the network, the PPYoloE loss, augmentation, AdamW + cosine schedule, EMA, its COCO
validation each epoch, and its full training checkpoints (weights/last.pt, weights/best.pt, ~256 MB each
for yolo_nas_s: model, train_model, optimizer, EMA, RNG).

What we do around it:
- validate the dataset first (builder.data.dataset) and refuse unusable data with the report;
- hand libreyolo a clean YOLO-format view of the data (symlinks + rewritten labels), whatever the source
  layout (YOLO variants, COCO JSON);
- construct the model from scratch (`LibreYOLONAS(None, size, nb_classes)`), never a named checkpoint, and
  block every non-loopback network connection while training (libreyolo's named models fetch Deci's
  weights, which are non-commercial and need the network);
- our checkpoint policy (a subclass of libreyolo's trainer, see `_edge_trainer_class`): the best epoch's EMA
  weights go into the lean `ckpt_best.pth` (+ CheckpointMeta, no optimizer), and libreyolo's full state
  (`last.pt`, our metadata inside) becomes `ckpt_latest.pth`, so disk use stays bounded at one full + one
  lean checkpoint per experiment;
- print a per-epoch table, keep history.json and draw training curves (curves.png);
- resume from ckpt_latest.pth; optional warm start from a local checkpoint (`--pretrained PATH`).

Layout of `OUTPUT/checkpoints/NAME/`: ckpt_best.pth, ckpt_latest.pth, history.json, curves.png,
train_config.json, data/ (the YOLO view), libreyolo/ (libreyolo's run directory: logs, results.csv).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator

from builder.data.dataset import ValidationReport, load_dataset, validate_dataset, write_yolo_view
from builder.train.checkpoint import (
    ARCHITECTURES,
    META_KEY_IN_LIBREYOLO,
    CheckpointError,
    CheckpointMeta,
    TrainingMetrics,
    read_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

BEST_NAME = "ckpt_best.pth"
LATEST_NAME = "ckpt_latest.pth"


class DatasetRejected(Exception):
    """validate_dataset found errors; `report` says which, with file and line."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(f"dataset {report.path} is not usable: {len(report.errors)} errors")
        self.report = report


class TrainError(Exception):
    """Training cannot start or continue (bad options, nothing to resume, libreyolo contract broken)."""


class TrainConfig(BaseModel):
    """Everything a run depends on; saved as train_config.json beside the checkpoints."""

    model_config = ConfigDict(extra="forbid")

    dataset_path: Path
    experiment_name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    model: str = "yolo_nas_s"
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=16, ge=1)
    imgsz: int = Field(default=320, ge=32)
    device: str = "cpu"
    workers: int = Field(default=2, ge=0)
    output_dir: Path = Path("output")
    resume: bool = False
    pretrained: Path | None = None
    overwrite: bool = False
    lr0: float | None = Field(default=None, gt=0)
    seed: int = 0
    amp: bool | None = None
    eval_interval: int = Field(default=1, ge=1, description="validate every N epochs (and after the last)")
    save_period: int = Field(default=0, ge=0, description="also keep libreyolo's full epoch_N.pt every N epochs")
    patience: int = Field(default=0, ge=0, description="early stop after N epochs without improvement (0: off)")
    curves_every: int = Field(default=10, ge=1)
    latest_every_s: float = Field(default=30.0, ge=0, description="full resumable checkpoint at most this often")
    verbose: bool = False

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in ARCHITECTURES:
            raise ValueError(f"model must be one of {', '.join(ARCHITECTURES)}, not {v!r}")
        return v

    @field_validator("imgsz")
    @classmethod
    def _stride_multiple(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (the largest stride), not {v}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        ok = v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit()) or v.isdigit()
        if not ok:
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, not {v!r} (multi-GPU: use torchrun)")
        return v

    @property
    def experiment_dir(self) -> Path:
        return self.output_dir / "checkpoints" / self.experiment_name


# ------------------------------------------------------------------------------------- network guard


def _is_loopback(host: Any) -> bool:
    """Loopback, or the torch.distributed master (MASTER_ADDR) of a multi-node torchrun job."""
    if not isinstance(host, str):
        return False
    if host in ("localhost", "") or host == os.environ.get("MASTER_ADDR"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class NetworkBlocked(OSError):
    pass


@contextlib.contextmanager
def no_network(record: list[str] | None = None) -> Iterator[list[str]]:
    """Refuse every non-loopback connection and DNS lookup in this process while active.

    Weights must never be downloaded: this turns any attempt (libreyolo, torch hub, a dataset
    auto-download) into an immediate NetworkBlocked error instead of a silent fetch. Loopback stays open
    for torch.distributed rendezvous. Attempts are appended to `record`.
    """
    attempts: list[str] = record if record is not None else []
    orig_connect = socket.socket.connect
    orig_connect_ex = socket.socket.connect_ex
    orig_getaddrinfo = socket.getaddrinfo

    def _check(sock: socket.socket, address: Any) -> None:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        host = address[0] if isinstance(address, tuple) and address else address
        if not _is_loopback(host):
            attempts.append(f"connect {address!r}")
            raise NetworkBlocked(f"network access blocked during training: connect to {address!r}")

    def connect(sock: socket.socket, address: Any) -> None:
        _check(sock, address)
        return orig_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        _check(sock, address)
        return orig_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and not _is_loopback(h):
            attempts.append(f"resolve {h!r}")
            raise NetworkBlocked(f"network access blocked during training: DNS lookup of {h!r}")
        return orig_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign, assignment]
    socket.getaddrinfo = getaddrinfo
    old_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TORCH_HOME_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield attempts
    finally:
        socket.socket.connect = orig_connect  # type: ignore[method-assign, assignment]
        socket.socket.connect_ex = orig_connect_ex  # type: ignore[method-assign, assignment]
        socket.getaddrinfo = orig_getaddrinfo
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------ helpers


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _libreyolo_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _metric(vm: dict[str, float], *keys: str) -> float | None:
    for k in keys:
        v = vm.get(k)
        if v is not None:
            return float(v)
    return None


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    cls: float | None = None
    iou: float | None = None
    dfl: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    lr: float | None = None
    seconds: float
    best: bool = False


def _print_row(out: TextIO, r: EpochRecord, epochs: int) -> None:
    def f(v: float | None, w: int = 8, p: int = 4) -> str:
        return f"{v:{w}.{p}f}" if v is not None else " " * (w - 1) + "-"

    star = " *" if r.best else ""
    out.write(
        f"{r.epoch:>5}/{epochs:<5} {f(r.train_loss)} {f(r.cls)} {f(r.iou)} {f(r.dfl)} "
        f"{f(r.map50)} {f(r.map50_95, 9)} {r.lr if r.lr is not None else 0:9.2e} {r.seconds:7.1f}s{star}\n"
    )
    out.flush()


TABLE_HEADER = (
    f"{'epoch':>11} {'loss':>8} {'cls':>8} {'iou':>8} {'dfl':>8} {'mAP50':>8} {'mAP50-95':>9} {'lr':>9} {'time':>8}"
)


def plot_curves(history: list[EpochRecord], out: Path) -> Path | None:
    """Loss components and validation mAP per epoch, as one PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h.epoch for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(ep, [h.train_loss for h in history], label="total", lw=2)
    for name in ("cls", "iou", "dfl"):
        vals = [getattr(h, name) for h in history]
        if any(v is not None for v in vals):
            ax1.plot(ep, [v if v is not None else float("nan") for v in vals], label=name)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    val = [(h.epoch, h.map50, h.map50_95) for h in history if h.map50 is not None]
    if val:
        ax2.plot([v[0] for v in val], [v[1] for v in val], "o-", label="mAP50")
        ax2.plot([v[0] for v in val], [v[2] for v in val], "s-", label="mAP50-95")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation mAP")
    ax2.set_ylim(0, 1)
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------------ training


class _Run:
    """State shared by the trainer subclass (metadata into last.pt) and the epoch callback."""

    def __init__(self, cfg: TrainConfig, base_meta: CheckpointMeta, out: TextIO, bar: Any) -> None:
        self.cfg = cfg
        self.base_meta = base_meta
        self.out = out
        self.bar = bar
        self.history: list[EpochRecord] = []
        self.meta_hook_calls = 0
        self.last_val: dict[str, float] = {}
        self.last_loss: float | None = None
        self.best_meta: CheckpointMeta | None = None
        self.last_full_save = time.monotonic()

    @property
    def exp(self) -> Path:
        return self.cfg.experiment_dir

    @property
    def weights_dir(self) -> Path:
        return self.exp / "libreyolo" / "run" / "weights"

    def meta_for(self, epoch_done: int, val: dict[str, float], loss: float | None, best_epoch: int | None,
                 loss_items: dict[str, float] | None = None) -> CheckpointMeta:
        metrics = TrainingMetrics(
            map50=_metric(val, "metrics/mAP50"),
            map50_95=_metric(val, "metrics/mAP50-95"),
            best_epoch=best_epoch,
            train_loss=loss,
            loss_items=dict(loss_items or {}),
        )
        return self.base_meta.model_copy(
            update={"epoch": epoch_done, "metrics": metrics, "created": datetime.now(UTC)}
        )

    def save_history(self) -> None:
        (self.exp / "history.json").write_text(json.dumps([h.model_dump() for h in self.history], indent=1))

    def on_epoch(self, ev: Any) -> None:
        """libreyolo TrainEpochEvent (1-based epoch), fired after _save_checkpoint: table, history, curves."""
        vm = {k: float(v) for k, v in dict(ev.val_metrics or {}).items() if isinstance(v, int | float)}
        items = {k: float(v) for k, v in dict(ev.train_loss_items or {}).items()}
        lrs = list(dict(ev.lr or {}).values())
        rec = EpochRecord(
            epoch=int(ev.epoch),
            train_loss=float(ev.train_loss),
            cls=items.get("cls"),
            iou=items.get("iou"),
            dfl=items.get("dfl"),
            map50=_metric(vm, "metrics/mAP50") if ev.validated else None,
            map50_95=_metric(vm, "metrics/mAP50-95") if ev.validated else None,
            lr=float(lrs[0]) if lrs else None,
            seconds=float(ev.epoch_seconds),
            best=bool(ev.is_best),
        )
        self.history.append(rec)
        self.save_history()
        _print_row(self.out, rec, self.cfg.epochs)
        if self.bar is not None:
            self.bar.update(1)
            if rec.map50 is not None:
                self.bar.set_postfix(loss=f"{rec.train_loss:.3f}", mAP50=f"{rec.map50:.3f}")
        if rec.epoch % self.cfg.curves_every == 0:
            plot_curves(self.history, self.exp / "curves.png")


def _flat_metrics(val_metrics: Any) -> dict[str, float]:
    vm = dict(val_metrics or {})
    if isinstance(vm.get("metrics"), dict):  # libreyolo nests the scalars under "metrics"
        vm = dict(vm["metrics"])
    return {k: float(v) for k, v in vm.items() if isinstance(v, int | float)}


def _edge_trainer_class(run: _Run) -> type:
    """libreyolo's YOLO-NAS trainer with our checkpoint policy.

    - best epoch: the EMA weights go straight into our lean ckpt_best.pth (no 256 MB best.pt round trip);
    - full resumable state (libreyolo's last.pt, with our metadata added through its
      `_checkpoint_extra_metadata` hook, moved to ckpt_latest.pth): after the last epoch, on --save_period
      epochs, and otherwise at most every `latest_every_s` seconds. On CPU-sized runs an epoch takes a few
      seconds and a full save ~0.7 s, so saving every epoch would cost a quarter of the time; an interrupted
      run loses at most `latest_every_s` of training.
    """
    from libreyolo.models.yolonas.trainer import YOLONASTrainer
    from libreyolo.training.distributed import is_main_process, unwrap_model

    class EdgeYOLONASTrainer(YOLONASTrainer):  # type: ignore[misc, valid-type]
        def _save_checkpoint(self, epoch: int, loss: float, val_metrics: Any = None, is_best: Any = None) -> Any:
            if is_best is None:
                is_best = self._update_best_state(epoch, val_metrics)
            run.last_val = _flat_metrics(val_metrics)
            run.last_loss = float(loss)
            self._edge_epoch = epoch
            if not is_main_process():
                return None
            if is_best:
                ema = getattr(self, "ema_model", None)
                module = ema.ema if ema is not None else unwrap_model(self.model)
                meta = run.meta_for(epoch + 1, run.last_val, run.last_loss, epoch + 1)
                save_checkpoint(run.exp / BEST_NAME, module.state_dict(), meta)
                run.best_meta = meta
            done = epoch + 1
            period = int(getattr(self.config, "save_period", 0) or 0)
            due = (
                done >= int(self.config.epochs)
                or (period > 0 and done % period == 0)
                or time.monotonic() - run.last_full_save >= run.cfg.latest_every_s
            )
            if due:
                super()._save_checkpoint(epoch, loss, val_metrics, is_best=False)
                last_pt = run.weights_dir / "last.pt"
                if last_pt.exists():
                    os.replace(last_pt, run.exp / LATEST_NAME)
                run.last_full_save = time.monotonic()
            return None

        def _checkpoint_extra_metadata(self) -> dict[str, Any]:
            extra = dict(super()._checkpoint_extra_metadata())
            run.meta_hook_calls += 1
            epoch_done = int(getattr(self, "_edge_epoch", 0)) + 1
            meta = run.meta_for(epoch_done, run.last_val, run.last_loss, int(getattr(self, "best_epoch", 0) or 0))
            extra[META_KEY_IN_LIBREYOLO] = meta.model_dump(mode="json")
            return extra

    return EdgeYOLONASTrainer


@contextlib.contextmanager
def _use_trainer(cls: type) -> Iterator[None]:
    """LibreYOLONAS.train imports YOLONASTrainer from this module at call time; point it at ours."""
    import libreyolo.models.yolonas.trainer as trainer_mod

    orig = trainer_mod.YOLONASTrainer
    trainer_mod.YOLONASTrainer = cls  # type: ignore[misc]
    try:
        yield
    finally:
        trainer_mod.YOLONASTrainer = orig  # type: ignore[misc]


@contextlib.contextmanager
def _quiet_libreyolo(verbose: bool, log_file: Path) -> Iterator[TextIO]:
    """libreyolo logs INFO to stderr and pycocotools prints to stdout; keep our table readable.

    Yields the real stdout for our own output. libreyolo's INFO lines still go to its train.log, and
    pycocotools' prints to eval.log (both in the experiment directory).
    """
    real_out = sys.stdout
    lib = logging.getLogger("libreyolo")
    saved = (lib.level, list(lib.handlers), lib.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("libreyolo %(levelname)s: %(message)s"))
    lib.handlers = [handler]
    lib.setLevel(logging.INFO)
    lib.propagate = False
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        redirect = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(f)
        try:
            with redirect:
                yield real_out
        finally:
            lib.setLevel(saved[0])
            lib.handlers = saved[1]
            lib.propagate = saved[2]


def _load_pretrained(wrapper: Any, path: Path, num_classes: int, out: TextIO) -> None:
    """Warm start from a local checkpoint the user owns; the class head is skipped when its size differs."""
    state, meta, _ = read_checkpoint(path)
    target = wrapper.model.state_dict()
    usable = {k: v for k, v in state.items() if k in target and tuple(target[k].shape) == tuple(v.shape)}
    skipped = [k for k in state if k not in usable]
    if len(usable) < 0.5 * len(target):
        raise CheckpointError(
            f"{path}: only {len(usable)} of {len(target)} tensors fit; it is not a {wrapper.size!r} YOLO-NAS checkpoint"
        )
    wrapper.model.load_state_dict(usable, strict=False)
    out.write(
        f"warm start from {path} ({meta.architecture}, {meta.num_classes} classes): {len(usable)} tensors loaded, "
        f"{len(skipped)} skipped{' (class head: ' + str(num_classes) + ' classes now)' if skipped else ''}\n"
    )


def run_training(cfg: TrainConfig, out: TextIO | None = None, progress: bool = True) -> Path:
    """Validate, train, and return the path of ckpt_best.pth. Raises DatasetRejected / TrainError."""
    out = out or sys.stdout
    t_start = time.time()
    exp = cfg.experiment_dir
    latest = exp / LATEST_NAME
    if cfg.resume and not latest.exists():
        raise TrainError(f"--resume: {latest} does not exist (nothing to resume)")
    if not cfg.resume and latest.exists() and not cfg.overwrite:
        raise TrainError(
            f"{exp} already holds a run; pass --resume to continue it, --overwrite to start again, "
            "or choose another --experiment_name"
        )
    if cfg.pretrained is not None and cfg.resume:
        raise TrainError("--pretrained and --resume exclude each other")

    report = validate_dataset(cfg.dataset_path)
    if not report.usable:
        raise DatasetRejected(report)
    if report.warnings:
        out.write(f"dataset: {len(report.warnings)} warnings (first: {report.warnings[0]})\n")
    ds = load_dataset(cfg.dataset_path)
    exp.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite and not cfg.resume and _rank() == 0:
        for name in (BEST_NAME, LATEST_NAME, "history.json", "curves.png"):
            (exp / name).unlink(missing_ok=True)
    # One view per rank under torchrun, so ranks never race on the same symlinks.
    view = exp / ("data" if _rank() == 0 else f"data_rank{_rank()}")
    data_yaml = write_yolo_view(ds, view)
    (exp / "train_config.json").write_text(cfg.model_dump_json(indent=1))

    import libreyolo
    import torch

    resume_meta: CheckpointMeta | None = None
    if cfg.resume:
        _, resume_meta, _ = read_checkpoint(latest)
        if resume_meta.architecture != cfg.model or resume_meta.class_names != ds.class_names:
            raise TrainError(
                f"cannot resume {latest}: it is {resume_meta.architecture} with classes {resume_meta.class_names}, "
                f"the run asks for {cfg.model} with {ds.class_names}"
            )
        if resume_meta.epoch >= cfg.epochs:
            raise TrainError(f"{latest} already trained {resume_meta.epoch} epochs; raise --epochs to continue")

    device = _libreyolo_device(cfg.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"device {cfg.device!r} requested but CUDA is not available here")
    amp = cfg.amp if cfg.amp is not None else device.startswith("cuda")
    base_meta = CheckpointMeta(
        architecture=cfg.model,  # type: ignore[arg-type]
        num_classes=ds.num_classes,
        class_names=ds.class_names,
        imgsz=cfg.imgsz,
        dataset_fingerprint=ds.fingerprint(),
        dataset_path=str(Path(cfg.dataset_path).resolve()),
        libreyolo_version=getattr(libreyolo, "__version__", None),
        torch_version=torch.__version__,
        epochs=cfg.epochs,
    )

    from tqdm import tqdm

    done_before = resume_meta.epoch if resume_meta else 0
    bar = tqdm(total=cfg.epochs, initial=done_before, desc=cfg.experiment_name, unit="epoch",
               disable=not progress or _rank() != 0, file=sys.stderr, leave=False)
    run = _Run(cfg, base_meta, out, bar)
    if cfg.resume and (exp / "history.json").exists():
        run.history = [EpochRecord.model_validate(h) for h in json.loads((exp / "history.json").read_text())]
        run.history = [h for h in run.history if h.epoch <= done_before]

    attempts: list[str] = []
    size = cfg.model.rsplit("_", 1)[-1]
    libreyolo_dir = exp / "libreyolo"
    try:
        with _quiet_libreyolo(cfg.verbose, exp / "eval.log"), no_network(attempts):
            # `out` was resolved before stdout was redirected; under torchrun only rank 0 reports.
            real_out = out if _rank() == 0 else io.StringIO()
            run.out = real_out
            from libreyolo import LibreYOLONAS

            # model_path=None: built from scratch. A name like "LibreYOLONASs.pt" would fetch Deci's weights.
            wrapper = LibreYOLONAS(None, size=size, nb_classes=ds.num_classes, device=device)
            if cfg.pretrained is not None:
                _load_pretrained(wrapper, cfg.pretrained, ds.num_classes, real_out)
            real_out.write(
                f"training {cfg.model} ({sum(p.numel() for p in wrapper.model.parameters()) / 1e6:.2f}M params) "
                f"on {len(ds.images('train'))} train / {len(ds.images('val'))} val images, {ds.num_classes} classes "
                f"{ds.class_names}, {cfg.imgsz} px, batch {cfg.batch_size}, device {device}"
                f"{' (AMP)' if amp else ''}, {cfg.epochs} epochs{f', resuming after epoch {done_before}' if cfg.resume else ''}\n"
            )
            real_out.write(TABLE_HEADER + "\n")
            for rec in run.history:
                _print_row(real_out, rec, cfg.epochs)
            kwargs: dict[str, Any] = dict(
                data=str(data_yaml),
                epochs=cfg.epochs,
                batch=cfg.batch_size,
                imgsz=cfg.imgsz,
                device=device,
                workers=cfg.workers,
                seed=cfg.seed,
                project=str(libreyolo_dir),
                name="run",
                exist_ok=True,
                amp=amp,
                patience=cfg.patience,
                callbacks=[run.on_epoch],
                eval_interval=cfg.eval_interval,
                save_period=cfg.save_period,
                faster_coco_eval=False,  # not installed; avoids a warning per epoch
                sync_bn=device.startswith("cuda"),  # SyncBatchNorm is CUDA-only; CPU (gloo) DDP needs plain BN
            )
            if cfg.lr0 is not None:
                kwargs["lr0"] = cfg.lr0
            if cfg.resume:
                kwargs["resume"] = str(latest)
            with _use_trainer(_edge_trainer_class(run)):
                wrapper.train(**kwargs)
    except Exception as exc:
        if attempts:
            raise TrainError(f"training tried to reach the network ({'; '.join(attempts)}): refused") from exc
        raise
    finally:
        bar.close()
        if run.history and _rank() == 0:
            plot_curves(run.history, exp / "curves.png")
    if _rank() != 0:
        return exp / BEST_NAME
    if run.meta_hook_calls == 0:
        raise TrainError("libreyolo never called our checkpoint hook: its trainer internals changed")
    if attempts:
        raise TrainError(f"training tried to reach the network: {attempts}")
    best = exp / BEST_NAME
    if not best.exists() and latest.exists():
        # No validation ever improved (e.g. every mAP 0): keep the latest weights as the best we have.
        state, meta, _ = read_checkpoint(latest)
        save_checkpoint(best, state, meta)
    # Leftovers libreyolo may write at the end (average / precise-BN copies) would break the disk bound.
    for stray in ("best.pt", "last.pt", "average.pt"):
        (run.weights_dir / stray).unlink(missing_ok=True)
    summary = {
        "best": str(best),
        "latest": str(latest),
        "best_epoch": run.best_meta.metrics.best_epoch if run.best_meta else None,
        "best_map50": run.best_meta.metrics.map50 if run.best_meta else None,
        "best_map50_95": run.best_meta.metrics.map50_95 if run.best_meta else None,
        "epochs": cfg.epochs,
        "seconds": round(time.time() - t_start, 1),
    }
    (exp / "summary.json").write_text(json.dumps(summary, indent=1))
    out.write(
        f"best: epoch {summary['best_epoch']}, mAP50 {summary['best_map50'] or 0:.4f}, "
        f"mAP50-95 {summary['best_map50_95'] or 0:.4f} -> {best}\n"
        f"latest (resumable): {latest}\ncurves: {exp / 'curves.png'}\n"
        f"time: {summary['seconds']} s\n"
    )
    return best


def train(
    dataset_path: Path | str,
    experiment_name: str,
    epochs: int,
    batch_size: int,
    imgsz: int,
    model: str = "yolo_nas_s",
    output_dir: Path | str = Path("output"),
    device: str = "cpu",
    workers: int = 2,
    resume: bool = False,
    pretrained: Path | str | None = None,
    overwrite: bool = True,
    progress: bool = False,
    out: TextIO | None = None,
    **options: Any,
) -> Path:
    """Python entry point (demo, fixtures): train and return the path of ckpt_best.pth.

    Unlike the CLI, `overwrite` defaults to True so reruns into the same directory just work.
    Extra `options` are TrainConfig fields (lr0, seed, eval_interval, save_period, patience, amp, ...).
    """
    cfg = TrainConfig(
        dataset_path=Path(dataset_path),
        experiment_name=experiment_name,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        imgsz=imgsz,
        device=device,
        workers=workers,
        output_dir=Path(output_dir),
        resume=resume,
        pretrained=Path(pretrained) if pretrained else None,
        overwrite=overwrite and not resume,
        **options,
    )
    return run_training(cfg, out=out, progress=progress)

