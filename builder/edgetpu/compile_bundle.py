"""Give a bundle its Edge TPU model: compile its INT8 model here, or attach one compiled on another host.

Either way the compiled file is checked against the INT8 model (builder.edgetpu.attach), copied in as
model_edgetpu.tflite, listed in the manifest with `models.edgetpu` set, and the manifest re-signed
(builder.edgetpu.bundle_edit: the bundle is verified first and swapped in whole). `edgetpu_compiler`
exists only for x86-64 Linux; without it, `offline_instructions` says what to run where
(docs/EDGETPU_COMPILE.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol.manifest import Manifest
from agent.security.signing import SigningKey
from builder.edgetpu import compiler
from builder.edgetpu.attach import CompiledCheck, check_compiled
from builder.edgetpu.bundle_edit import BundleEditError, NewFile, edit_bundle, open_verified

EDGETPU_FILE = "model_edgetpu.tflite"
LOG_FILE = "edgetpu_compiler.log"
QUANT_FILE = "model_quant.tflite"


class CompilerMissing(RuntimeError):
    """No edgetpu_compiler here; the message says how to compile elsewhere and attach the result."""


@dataclass(frozen=True)
class CompileResult:
    manifest: Manifest
    check: CompiledCheck
    key_id: str | None  # the key that signed the new manifest (None: the bundle stays unsigned)
    log: dict[str, Any] | None = None  # the parsed compiler log when compiled here


def reference_model(manifest: Manifest) -> str:
    """The INT8 model the Edge TPU model is compiled from: model_quant.tflite, else the CPU model."""
    paths = {f.path for f in manifest.files}
    return QUANT_FILE if QUANT_FILE in paths else manifest.models.cpu


def offline_instructions(root: Path, reference: str) -> str:
    stem = Path(reference).stem
    return (
        f"{compiler.COMPILER} is not on PATH. It exists only for x86-64 Linux (see docs/EDGETPU_COMPILE.md).\n"
        f"On an x86-64 Linux host with edgetpu-compiler 16 installed, copy {root / reference} there and run:\n"
        f"  {compiler.compile_command(Path(reference), Path('.'))}\n"
        f"then copy the {stem}_edgetpu.tflite it writes back here and run:\n"
        f"  edge-builder compile {root} --attach {stem}_edgetpu.tflite --key KEY"
    )


@contextmanager
def compiler_on_path(exe: Path | None) -> Iterator[None]:
    """Make `exe` the `edgetpu_compiler` that compiler.find_compiler() finds (a link in a temp dir put
    first on PATH), whatever its file name; None: PATH as it is."""
    if exe is None:
        yield
        return
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise CompilerMissing(f"--compiler {exe}: not an executable file")
    saved = os.environ.get("PATH", "")
    with tempfile.TemporaryDirectory(prefix="edgetpu-compiler-") as d:
        (Path(d) / compiler.COMPILER).symlink_to(exe.resolve())
        os.environ["PATH"] = d + os.pathsep + saved
        try:
            yield
        finally:
            os.environ["PATH"] = saved


def _check_version(manifest: Manifest, version: int | None) -> None:
    if version is not None and version <= manifest.version:
        raise BundleEditError(f"--version {version} is not above the bundle's version {manifest.version}")


def attach(root: Path, compiled: Path, key: SigningKey | None, allow_partial: bool = False,
           version: int | None = None) -> CompileResult:
    """Check `compiled` against the bundle's INT8 model and add it as model_edgetpu.tflite."""
    bundle = open_verified(root, key)
    _check_version(bundle.manifest, version)
    reference = reference_model(bundle.manifest)
    check = check_compiled(bundle.path(reference), Path(compiled), allow_partial)
    # A compiler log already in the bundle describes another compile of another file: it goes.
    manifest = edit_bundle(bundle, key, [NewFile(Path(compiled), EDGETPU_FILE)], drop=[LOG_FILE],
                           models={"edgetpu": EDGETPU_FILE}, version=version)
    return CompileResult(manifest, check, key.key_id if key else None)


def compile_here(root: Path, key: SigningKey | None, allow_partial: bool = False, exe: Path | None = None,
                 timeout_s: int = 600, version: int | None = None) -> CompileResult:
    """Compile the bundle's INT8 model with edgetpu_compiler and add the result and its log."""
    bundle = open_verified(root, key)  # before a compile that can take minutes
    _check_version(bundle.manifest, version)
    reference = reference_model(bundle.manifest)
    with compiler_on_path(exe):
        if compiler.find_compiler() is None:
            raise CompilerMissing(offline_instructions(Path(root), reference))
        with tempfile.TemporaryDirectory(prefix="edgetpu-compile-") as d:
            out = Path(d)
            log = compiler.compile_model(bundle.path(reference), out, timeout_s, allow_partial)
            check = check_compiled(bundle.path(reference), out / EDGETPU_FILE, allow_partial)
            manifest = edit_bundle(bundle, key, [NewFile(out / EDGETPU_FILE, EDGETPU_FILE),
                                                 NewFile(out / LOG_FILE, LOG_FILE)],
                                   models={"edgetpu": EDGETPU_FILE}, version=version)
    return CompileResult(manifest, check, key.key_id if key else None, log)
