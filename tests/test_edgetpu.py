"""builder.edgetpu.compiler: compiler command and log parser.

The log below is the format edgetpu_compiler 16 prints with `-s` (the layout of Coral's documented
output, coral.ai/docs/edgetpu/compiler); it is the only place a compiler log is not produced by the real
compiler, because the compiler exists only for x86-64 Linux with Coral's apt repository.
"""

from __future__ import annotations

from pathlib import Path

from builder.edgetpu.compiler import compile_command, find_compiler, parse_log

PARTIAL_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 600 seconds.

Model compiled successfully in 2817 ms.

Input model: model_quant.tflite
Input size: 11.92MiB
Output model: model_quant_edgetpu.tflite
Output size: 12.13MiB
On-chip memory used for caching model parameters: 6.89MiB
On-chip memory remaining for caching model parameters: 128.00B
Off-chip memory used for streaming uncached model parameters: 4.97MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 172
Operation log: model_quant_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 170
Number of operations that will run on CPU: 2

Operator                       Count      Status

CONV_2D                        98         Mapped to Edge TPU
PAD                            9          Mapped to Edge TPU
ADD                            20         Mapped to Edge TPU
CONCATENATION                  13         Mapped to Edge TPU
MAX_POOL_2D                    3          Mapped to Edge TPU
TRANSPOSE_CONV                 2          Mapped to Edge TPU
QUANTIZE                       25         Mapped to Edge TPU
TRANSPOSE                      2          Operation is otherwise supported, but not mapped due to some unspecified limitation
Compilation child process completed within timeout period.
Compilation succeeded!
"""


def test_parses_the_mapping_table() -> None:
    p = parse_log(PARTIAL_LOG)
    assert p["compiler_version"] == "16.0.384591198"
    assert p["succeeded"] and p["subgraphs"] == 1 and p["total_ops"] == 172
    assert p["tpu_ops"] == 170 and p["cpu_ops"] == 2
    cpu = [r for r in p["ops"] if not r["on_tpu"]]
    assert [(r["op"], r["count"]) for r in cpu] == [("TRANSPOSE", 2)]
    assert "unspecified limitation" in cpu[0]["status"]
    assert p["off_chip_memory"] == "4.97MiB"


def test_parses_a_failed_compile() -> None:
    p = parse_log("Edge TPU Compiler version 16.0.384591198\nERROR: Didn't find op for builtin opcode 'CONV_2D' version '5'\n")
    assert not p["succeeded"] and p["ops"] == []


def test_command_for_the_user() -> None:
    cmd = compile_command(Path("out dir/model_quant.tflite"), Path("out dir"))
    assert cmd.startswith("edgetpu_compiler -s -t 600 -o 'out dir' ")
    assert find_compiler() is None or Path(find_compiler() or "").exists()
