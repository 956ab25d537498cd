"""What `edge-builder convert` is asked to do, checked before any heavy work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agent.inference.decode.yolo_nas import DECODER_NAMES, ClassHead
from agent.security.signing import SigningKey

MODEL_TYPES = ("yolo_nas",)
OUTPUT_FORMATS = ("tflite",)
# The class head convert exports unless told (docs/CONVERSION.md, "Class head": chosen by measurement).
DEFAULT_CLASS_HEAD: ClassHead = "sigmoid"

Log = Callable[[str], None]


class ConvertError(Exception):
    """A conversion failed for a reason the user can act on; the message says which."""


class ConvertOptions(BaseModel):
    """The parameters of one conversion (the CLI flags of `edge-builder convert`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: Path
    calibration_dir: Path
    out_dir: Path | None = None
    imgsz: int | None = None
    key: Path | None = None
    dataset_path: Path | None = None
    version: int = 1
    name: str | None = None
    model_type: str = "yolo_nas"
    output_formats: tuple[str, ...] = ("tflite",)
    n_calib: int = 300
    seed: int = 0
    per_tensor: bool = False
    class_head: ClassHead = DEFAULT_CLASS_HEAD  # "sigmoid": the class sigmoid inside the INT8 graph
    threads: int = 2
    latency_runs: int = 20
    allow_clipped_outputs: bool = False
    allow_partial: bool = False
    strict_calibration: bool = False  # fail when a stride has no calibration objects (or no labels)
    compile_edgetpu: bool = True
    keep_intermediate: Path | None = None


def check_options(opts: ConvertOptions) -> SigningKey | None:
    """Fail fast on what needs no model: model type, formats, the signing key, the calibration source.

    Returns the loaded signing key (None: the bundle stays unsigned).
    """
    if opts.model_type not in MODEL_TYPES:
        raise ConvertError(f"unknown --model_type {opts.model_type!r}; supported: {', '.join(MODEL_TYPES)}")
    bad_formats = [f for f in opts.output_formats if f not in OUTPUT_FORMATS]
    if bad_formats:
        raise ConvertError(f"unsupported --output_formats {bad_formats}; supported: {', '.join(OUTPUT_FORMATS)}")
    signing_key = None
    if opts.key is not None:
        try:
            signing_key = SigningKey.load(opts.key)
        except Exception as exc:  # noqa: BLE001 - any unreadable key is the same user error
            raise ConvertError(f"cannot load signing key {opts.key}: {exc}") from exc
    if not opts.calibration_dir.exists():
        raise ConvertError(f"calibration source {opts.calibration_dir} does not exist")
    return signing_key


def resolve_class_head(requested: str | None, manifest_version: int) -> ClassHead:
    """The class head to export: the requested one, else the default; a schema 1 manifest cannot name the
    sigmoid head's decoder, so `--manifest-version 1` exports logits unless sigmoid was asked for (an error)."""
    if requested is None:
        return "logits" if manifest_version == 1 else DEFAULT_CLASS_HEAD
    if requested not in DECODER_NAMES:
        raise ConvertError(f"--class-head must be one of {sorted(DECODER_NAMES)}, not {requested!r}")
    if requested == "sigmoid" and manifest_version == 1:
        raise ConvertError("--class-head sigmoid needs manifest schema 2 (its decoder, yolo_nas_sigmoid, is unknown to "
                           "schema 1 nodes): drop --manifest-version 1, or use --class-head logits")
    return "sigmoid" if requested == "sigmoid" else "logits"
