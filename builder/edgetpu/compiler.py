"""The Edge TPU compiler: find it, run it, parse its log.

`edgetpu_compiler` exists only for x86-64 Linux (Debian package `edgetpu-compiler` from Coral's apt
repository). When it is absent the converter prints `compile_command()` for the user to run there.
The log format parsed here is the compiler's stdout with `-s` (show operations), e.g.

    Edge TPU Compiler version 16.0.384591198
    ...
    Number of Edge TPU subgraphs: 1
    Total number of operations: 163
    ...
    Operator                       Count      Status

    CONV_2D                        98         Mapped to Edge TPU
    TRANSPOSE                      2          Operation is otherwise supported, but not mapped due to some unspecified limitation
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

COMPILER = "edgetpu_compiler"
MAPPED = "Mapped to Edge TPU"


class CompileError(RuntimeError):
    pass


def find_compiler() -> str | None:
    return shutil.which(COMPILER)


def compile_command(model: Path, out_dir: Path, timeout_s: int = 600) -> str:
    return f"{COMPILER} -s -t {timeout_s} -o {shlex.quote(str(out_dir))} {shlex.quote(str(model))}"


_ROW = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]*|[a-z][\w-]*)\s+(?P<count>\d+)\s+(?P<status>\S.*?)\s*$")


def parse_log(text: str) -> dict[str, Any]:
    """The compiler's summary and per-op mapping table."""

    def num(pattern: str) -> int | None:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else None

    version = re.search(r"Edge TPU Compiler version (\S+)", text)
    rows: list[dict[str, Any]] = []
    in_table = False
    for line in text.splitlines():
        if re.match(r"^Operator\s+Count\s+Status\s*$", line.strip()):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.strip():
            if rows:
                in_table = False
            continue
        m = _ROW.match(line.strip())
        if m:
            rows.append({"op": m["op"], "count": int(m["count"]), "status": m["status"],
                         "on_tpu": m["status"] == MAPPED})
        elif rows:
            in_table = False
    tpu = sum(r["count"] for r in rows if r["on_tpu"])
    cpu = sum(r["count"] for r in rows if not r["on_tpu"])
    return {
        "compiler_version": version.group(1) if version else None,
        "succeeded": "Model compiled successfully" in text or "Compilation succeeded" in text,
        "subgraphs": num(r"Number of Edge TPU subgraphs:\s*(\d+)"),
        "total_ops": num(r"Total number of operations:\s*(\d+)"),
        "tpu_ops": num(r"Number of operations that will run on Edge TPU:\s*(\d+)") if rows == [] else tpu,
        "cpu_ops": num(r"Number of operations that will run on CPU:\s*(\d+)") if rows == [] else cpu,
        "ops": rows,
        "on_chip_memory": _mem(text, r"On-chip memory used for caching model parameters:\s*(\S+)"),
        "off_chip_memory": _mem(text, r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)"),
    }


def _mem(text: str, pattern: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None


def compile_model(model: Path, out_dir: Path, timeout_s: int = 600, allow_partial: bool = False) -> dict[str, Any]:
    """Run the compiler; writes out_dir/model_edgetpu.tflite and returns the parsed log.

    Fails when any op of the body falls to the CPU, unless `allow_partial`.
    """
    exe = find_compiler()
    if exe is None:
        raise CompileError(f"{COMPILER} not found on PATH")
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-s", "-t", str(timeout_s), "-o", str(out_dir), str(model)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 60)
    except subprocess.TimeoutExpired as exc:
        raise CompileError(f"{COMPILER} did not finish within {timeout_s + 60} s") from exc
    log = proc.stdout + proc.stderr
    (out_dir / "edgetpu_compiler.log").write_text(log)
    parsed = parse_log(log)
    produced = out_dir / f"{model.stem}_edgetpu.tflite"
    if proc.returncode != 0 or not produced.exists():
        raise CompileError(f"{COMPILER} failed (exit {proc.returncode}):\n{log[-2000:]}")
    produced.replace(out_dir / "model_edgetpu.tflite")
    stray = out_dir / f"{model.stem}_edgetpu.log"
    if stray.exists():
        stray.unlink()
    if parsed["cpu_ops"] and not allow_partial:
        cpu = [f"{r['op']} ×{r['count']} ({r['status']})" for r in parsed["ops"] if not r["on_tpu"]]
        (out_dir / "model_edgetpu.tflite").unlink()
        raise CompileError(f"{parsed['cpu_ops']} op(s) would run on the CPU: {', '.join(cpu)} (use --allow-partial to accept)")
    return parsed
