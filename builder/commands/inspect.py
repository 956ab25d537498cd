"""edge-builder inspect: ops, quantization and Edge TPU status/readiness of any .tflite file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a .tflite file's ops, I/O quantization and Edge TPU status (compiled, or predicted readiness)",
    )
    p.add_argument("model", type=Path, help=".tflite file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--ops", action="store_true", help="list every op with version, dtypes and shapes")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from builder.edgetpu.tflite_inspect import InspectError, inspect_model, readiness

    try:
        info = inspect_model(args.model)
        ready = readiness(args.model, info)
    except InspectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out = {k: v for k, v in info.items() if k != "ops" or args.ops}
        out["readiness"] = {k: v for k, v in ready.items() if k != "ops" or args.ops}
        print(json.dumps(out))
        return 0
    print(f"{info['path']}  ({info['size_bytes'] / 1e6:.2f} MB)")
    if info["edgetpu_compiled"]:
        cpu = info["cpu_ops"] or []
        print(f"  Edge TPU compiled model: {info['tpu_ops']} edgetpu-custom-op, {len(cpu)} op(s) on the CPU"
              + (f": {', '.join(cpu)}" if cpu else ""))
    else:
        print("  CPU model (not compiled for the Edge TPU)")
        print(f"  readiness: {ready['summary']}")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            q = f" scale {t['scale']:.6g} zero point {t['zero_point']}" if t["scale"] is not None else ""
            print(f"  {kind[:-1]:<6} {t['name']:<28} {t['shape']} {t['dtype']}{q}")
    print("  ops: " + ", ".join(f"{k} {v}" for k, v in info["op_counts"].items()))
    _print_decisions(info, ready, every=args.ops)
    return 0


def _print_decisions(info: dict[str, Any], ready: dict[str, Any], every: bool) -> None:
    """One line per decision: op index, op, placement, rule (its source once, below). Without --ops only
    the ops predicted on the CPU."""
    rows = {r["index"]: r for r in ready.get("ops", [])}
    sources: dict[str, str] = {}
    for op in info["ops"]:
        r = rows.get(op["index"], {})
        if r:
            sources.setdefault(r["rule"], r["source"])
        if every:
            shapes = [t["shape"] for t in op["outputs"]]
            dts = sorted({t["dtype"] for t in op["inputs"] + op["outputs"] if t["dtype"]})
            print(f"  #{op['index']:<4} {op['custom_code'] or op['op']:<22} v{op['version']} {','.join(dts):<14} "
                  f"{shapes} {r.get('placement', '')} {r.get('rule', '')} {r.get('detail', '')}")
        elif r and r["predicted"] == "cpu":
            print(f"  #{op['index']:<4} {op['op']:<22} {r['placement']:<4} {r['rule']}: {r['detail']}")
    for rule, source in sources.items():
        if every or rule != "mapped":
            print(f"  rule {rule}: {source}")
    for name, text in ready.get("caveats", {}).items():
        print(f"  caveat {name}: {text}")
