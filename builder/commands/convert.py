"""edge-builder convert: checkpoint → INT8 TFLite variants → a (signed) model bundle with measured accuracy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "convert",
        help="quantize a checkpoint to INT8 TFLite (CPU + Edge TPU) and write a model bundle",
        description=(
            "Post-training INT8 quantization of a YOLO-NAS checkpoint. Writes model_cpu.tflite (FP16 weights), "
            "model_dynamic.tflite, model_quant.tflite (full INT8, uint8 I/O) and, when edgetpu_compiler is on PATH, "
            "model_edgetpu.tflite, plus manifest.json, golden self-test data and report.{json,md,png}. "
            "Default output: output/models/NAME (NAME = the checkpoint's experiment directory)."
        ),
    )
    p.add_argument("--model_path", "--model-path", type=Path, required=True, help="ckpt_best.pth from edge-builder train")
    p.add_argument("--model_type", "--model-type", default="yolo_nas", help="model family (only yolo_nas)")
    p.add_argument("--output_formats", "--output-formats", nargs="+", default=["tflite"], help="only tflite")
    p.add_argument("--calibration_dir", "--calibration-dir", type=Path, required=True,
                   help="folder of representative images (searched recursively) or a .tar.gz of them")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the checkpoint's training size)")
    p.add_argument("--out", "--output_dir", "--output-dir", dest="out_dir", metavar="OUT", type=Path, default=None,
                   help="bundle directory (default output/models/NAME)")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the experiment name)")
    p.add_argument("--version", type=int, default=1, help="bundle version (monotonic integer)")
    p.add_argument("--key", type=Path, default=None, help="sign the bundle with this private key (edge-builder keygen)")
    p.add_argument("--dataset_path", "--dataset-path", type=Path, default=None,
                   help="dataset whose validation split measures every variant's mAP")
    p.add_argument("--calibration_images", "--calibration-images", dest="n_calib", metavar="CALIBRATION_IMAGES",
                   type=int, default=300,
                   help="how many calibration images to sample (deterministic)")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor INT8 weights (default per-channel)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for latency measurements")
    p.add_argument("--allow-clipped-outputs", action="store_true",
                   help="accept INT8 class outputs that cannot represent positive logits (reported either way)")
    p.add_argument("--allow-partial", action="store_true",
                   help="accept an Edge TPU compile that leaves ops on the CPU")
    p.add_argument("--strict-calibration", action="store_true",
                   help="fail unless the calibration set has labelled objects at every head stride "
                   "(default: a warning naming the strides calibrated on background only)")
    p.add_argument("--no-compile", dest="compile_edgetpu", action="store_false",
                   help="do not run edgetpu_compiler even when present")
    p.add_argument("--class-head", dest="class_head", choices=("sigmoid", "logits"), default=None,
                   help="class outputs of the INT8 graph: sigmoid (probabilities, fixed [0, 1] INT8 scale that "
                   "calibration cannot break; manifest schema 2 only) or logits (raw, calibrated range); default: "
                   "sigmoid, logits with --manifest-version 1 (docs/CONVERSION.md, 'Class head')")
    p.add_argument("--keep-intermediate", "--keep_intermediate", dest="keep_intermediate", metavar="DIR", type=Path,
                   default=None, help="also copy the FP32 TFLite file, the ONNX body and the calibration array to DIR "
                   "(they are not part of the bundle)")
    p.add_argument("--manifest-version", type=int, choices=(1, 2), default=2,
                   help="manifest schema: 2 (default) lists each backend's files so a node fetches only what it "
                   "runs; 1 for agents older than schema 2 (every node fetches every file)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from builder.convert.options import resolve_class_head
    from builder.convert.pipeline import ConvertError, ConvertOptions, run_conversion

    # The flags' dest names are ConvertOptions' field names.
    fields = {k: v for k, v in vars(args).items() if k in ConvertOptions.model_fields}
    try:
        fields["class_head"] = resolve_class_head(args.class_head, args.manifest_version)
        opts = ConvertOptions(**fields)
        out = run_conversion(opts)
        if args.manifest_version != 2:  # the builder writes schema 2; rewrite (and re-sign) for old agents
            from agent.security.signing import SigningKey
            from builder.convert.bundle import set_schema

            set_schema(out, args.manifest_version, SigningKey.load(opts.key) if opts.key else None)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
