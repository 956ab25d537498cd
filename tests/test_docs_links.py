"""The repository stands alone: its README and docs never point at files outside it, its code never reads them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A relative path climbing out of its folder ("../x"), but not an ellipsis (".../announce").
CLIMB = re.compile(r"(?<![.\w/])((?:\.\./)+[\w.-][\w./-]*)")
# Absolute paths of the machine the project was developed on.
MACHINE_PATH = re.compile(r"(?<![\w.])/work/[^\s`'\")]*")


def _inside(doc: Path, target: str) -> bool:
    return (doc.parent / target).resolve().is_relative_to(ROOT)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_in_the_repository_and_exist(doc: Path) -> None:
    bad = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # web links and anchors
        path = target.split("#")[0]
        if not _inside(doc, path) or not (doc.parent / path).exists():
            bad.append(target)
    assert not bad, f"{doc.name}: links leaving the repository or to missing files: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_paths_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    leaving = [p for p in CLIMB.findall(text) if not _inside(doc, p)]
    machine = MACHINE_PATH.findall(text)
    assert not leaving and not machine, f"{doc.name}: paths outside the repository: {leaving + machine}"


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    text = "see [guide](../shared/seed-guide.md), `/work/shared/notes/x.md`, `.../announce/all`, `../train/images`"
    assert LINK.findall(text) == ["../shared/seed-guide.md"]
    assert CLIMB.findall(text) == ["../shared/seed-guide.md", "../train/images"]
    assert MACHINE_PATH.findall(text) == ["/work/shared/notes/x.md"]
    assert not _inside(ROOT / "README.md", "../shared/seed-guide.md")
    assert _inside(ROOT / "docs" / "X.md", "../train/images")


def _outside_literals(path: Path) -> list[str]:
    """String literals (docstrings aside) naming the folder beside the repository or this machine's paths."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
            and (n.value == "shared" or "../shared" in n.value or MACHINE_PATH.search(n.value))]


def test_code_reads_nothing_outside_the_repository() -> None:
    """A fresh clone has no ../shared beside it: tests, benches and the packages must not reach for it."""
    files = [p for d in ("agent", "builder", "tests", "bench") for p in sorted((ROOT / d).rglob("*.py"))
             if p != Path(__file__).resolve()]  # this file's own examples of what is refused
    bad = {str(p.relative_to(ROOT)): hits for p in files if (hits := _outside_literals(p))}
    assert not bad, f"paths outside the repository: {bad}"
