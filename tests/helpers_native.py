"""Fake libedgetpu libraries compiled with gcc from tests/native/fake_delegate.c: each exports the TFLite
external delegate plugin ABI and edgetpu_version(), and misbehaves in one way (FAKE_CRASH segfaults,
FAKE_HANG never returns, FAKE_NULL returns no delegate, FAKE_NOOP claims no nodes)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).parent / "native" / "fake_delegate.c"
MODES = ("crash", "hang", "null", "noop")


def build(mode: str, dest: Path) -> Path:
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", f"-DFAKE_{mode.upper()}",
         "-o", str(dest), str(SRC)],
        check=True, capture_output=True,
    )  # fmt: skip
    return dest


def build_all(dest_dir: Path, modes: tuple[str, ...] = MODES) -> dict[str, Path]:
    """{mode: library} in dest_dir; skips the test when gcc is missing."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    return {m: build(m, dest_dir / f"libfake_{m}.so") for m in modes}
