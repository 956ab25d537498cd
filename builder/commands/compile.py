"""edge-builder compile: add an Edge TPU model to a bundle (compiled here, or on an x86-64 host and attached)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "compile",
        help="add model_edgetpu.tflite to a bundle: compile it here or --attach one compiled elsewhere; re-sign",
        description="Compile the bundle's model_quant.tflite with edgetpu_compiler (x86-64 Linux only), or with "
        "--attach check a file compiled on another host (edgetpu-custom-op present; inputs and outputs equal to "
        "model_quant.tflite's by name, shape, dtype and quantization). The file goes into the bundle as "
        "model_edgetpu.tflite, the manifest lists it as models.edgetpu and is re-signed with --key. The bundle "
        "is verified first (signature against --key, every file against its sha256) and replaced whole, so a "
        "refusal or failure leaves it as it was. See docs/EDGETPU_COMPILE.md.",
    )
    p.add_argument("bundle", type=Path, help="bundle directory (manifest.json + model files)")
    p.add_argument("--attach", type=Path, metavar="FILE",
                   help="an *_edgetpu.tflite compiled elsewhere from this bundle's model_quant.tflite")
    p.add_argument("--key", type=Path, help="private signing key; required when the bundle is signed")
    p.add_argument("--allow-partial", action="store_true",
                   help="accept a model with ops left to the CPU (default: refuse)")
    p.add_argument("--compiler", type=Path, metavar="PATH",
                   help="edgetpu_compiler to run (default: the one on PATH)")
    p.add_argument("--version", type=int, metavar="N",
                   help="give the changed bundle manifest version N (above the current one): nodes already running "
                   "the current version accept only a higher one (default: keep the version)")
    p.add_argument("--timeout", type=int, default=600, help="compiler timeout in seconds (default 600)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent.security.signing import SignatureError, SigningKey
    from builder.edgetpu.attach import AttachError
    from builder.edgetpu.bundle_edit import BundleEditError
    from builder.edgetpu.compile_bundle import CompilerMissing, attach, compile_here
    from builder.edgetpu.compiler import CompileError

    if args.attach is not None and args.compiler is not None:
        print("error: --attach and --compiler exclude each other (attach compiles nothing)", file=sys.stderr)
        return 2
    try:
        key = SigningKey.load(args.key) if args.key else None
        if args.attach is not None:
            res = attach(args.bundle, args.attach, key, args.allow_partial, args.version)
        else:
            res = compile_here(args.bundle, key, args.allow_partial, args.compiler, args.timeout, args.version)
    except CompilerMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (AttachError, BundleEditError, CompileError, SignatureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    entry = res.manifest.file("model_edgetpu.tflite")
    how = "attached" if res.log is None else f"compiled (edgetpu_compiler {res.log.get('compiler_version')})"
    print(f"{how}   {args.bundle / entry.path} ({entry.size} bytes, sha256 {entry.sha256[:12]}…)")
    cpu = f": {', '.join(res.check.cpu_ops)}" if res.check.cpu_ops else ""
    print(f"ops        {res.check.tpu_ops} edgetpu-custom-op, {len(res.check.cpu_ops)} on the CPU{cpu}")
    print(f"manifest   {res.manifest.name} v{res.manifest.version}: models.edgetpu = {res.manifest.models.edgetpu}")
    print(f"signed     key {res.key_id}" if res.key_id else "signed     no (the bundle was unsigned; give --key)")
    return 0
