"""The shape docs/ARCHITECTURE.md promises: small modules and functions, no import cycles, nothing imports upward.

Static checks over the source (ast), so they run in both venvs without importing anything heavy.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "builder")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# The layers of each side, bottom first: a module may import its own layer and the ones below it.
# "agent.protocol" etc. are the contracts both sides import; the builder sits on top of the whole agent.
LAYERS = [
    ["agent.atomic", "agent.protocol"],
    ["agent.security", "agent.camera"],
    ["agent.inference"],
    ["agent.updates", "agent.telemetry", "agent.system", "agent.capture"],
    ["agent.config"],
    ["agent.service"],
    ["agent.doctor"],
    ["agent.commands", "agent.cli"],
    ["builder.data", "builder.edgetpu"],
    ["builder.train", "builder.export", "builder.quantize"],
    ["builder.evaluate"],
    ["builder.convert"],
    ["builder.fleet"],
    ["builder.rollout"],
    ["builder.dashboard", "builder.demo"],
    ["builder.flywheel"],
    ["builder.commands", "builder.cli"],
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(path: Path, module: str) -> set[str]:
    """Modules of this project that `module` imports (anywhere in the file, function-local included)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in MODULES:
                n = n.rpartition(".")[0]
            if n and n != module and n.split(".")[0] in PACKAGES:
                found.add(n)
    return found


GRAPH = {m: _imports(p, m) for m, p in MODULES.items()}


def _exceptions() -> set[str]:
    """`path` or `path:function` names listed as exceptions, with a reason, in docs/ARCHITECTURE.md."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Exceptions", 1)[1] if "## Exceptions" in text else ""
    return set(re.findall(r"`([\w/.:]+)`", section))


def test_modules_stay_small() -> None:
    allowed = _exceptions()
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not {k: v for k, v in big.items() if k not in allowed}, big


def test_functions_stay_small() -> None:
    allowed = _exceptions()
    long: dict[str, int] = {}
    for p in MODULES.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                name = f"{p.relative_to(ROOT)}:{node.name}"
                if n > MAX_FUNCTION_LINES and name not in allowed:
                    long[name] = n
    assert not long, long


def _package_of(module: str) -> str:
    # The two-level unit (agent.inference, builder.convert...) the layers name; single files name themselves.
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_packages() -> None:
    """Subpackages form a DAG (cycles inside one subpackage would show up as import errors anyway)."""
    edges: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        a = _package_of(m)
        edges.setdefault(a, set()).update(b for d in deps if (b := _package_of(d)) != a)
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, n, d]))
            if d not in state:
                visit(d, [*path, n])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles_between_modules() -> None:
    """Counting function-local imports too: a cycle hidden inside a function is still a cycle."""
    assert not _cycles(GRAPH)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_upward(module: str) -> None:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    mine = rank.get(_package_of(module))
    if mine is None:
        return  # the top-level packages' __init__
    upward = sorted(d for d in GRAPH[module] if rank.get(_package_of(d), -1) > mine)
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_agent_never_imports_the_builder() -> None:
    bad = {m: sorted(d for d in deps if d.startswith("builder")) for m, deps in GRAPH.items()
           if m.startswith("agent")}
    assert not {m: d for m, d in bad.items() if d}
