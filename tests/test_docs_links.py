"""The repository stands alone: its README and docs never point at files outside it."""

from __future__ import annotations

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
