"""Figures quoted in README.md and docs/*.md that come from a reference result must match that file.

The convention: a figure followed directly by an HTML comment naming its source (invisible when rendered),

    0.17<!-- ref: bench/results/reference/variants_128.json#variants.quant.latency_ratio -->

optionally with `scale=` (the doc shows value × scale, e.g. `scale=1e-6` for bytes as MB). The path after `#`
is a dotted path of keys into the JSON file. The doc's figure must equal the file's value rounded to the
decimals the doc shows; a reference that does not resolve fails too. bench/results/reference/README.md says how
files get there (a benchmark wrote them; never typed in).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REF = re.compile(r"(?P<fig>[-+−]?\d+(?:\.\d+)?)\s*<!--\s*ref:\s*(?P<file>[^#\s]+)#(?P<path>[\w.\-]+)"
                 r"(?:\s+scale=(?P<scale>[0-9.eE+-]+))?\s*-->")


def refs_text(text: str) -> list[tuple[str, str, str, float]]:
    """(figure, file, key path, scale) of every tagged figure in a text."""
    return [(m["fig"].replace("−", "-"), m["file"], m["path"], float(m["scale"] or 1)) for m in REF.finditer(text)]


def refs(doc: Path) -> list[tuple[str, str, str, float]]:
    return refs_text(doc.read_text())


def lookup(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def check(fig: str, file: str, path: str, scale: float) -> str | None:
    """None when the doc's figure matches its reference; else what differs."""
    src = ROOT / file
    if not src.is_file():
        return f"{file} does not exist"
    try:
        value = lookup(json.loads(src.read_text()), path)
    except (KeyError, IndexError, ValueError, TypeError):
        return f"{file} has no {path}"
    decimals = len(fig.split(".")[1]) if "." in fig else 0
    shown = f"{float(value) * scale:.{decimals}f}"
    if float(shown) != float(fig):
        return f"doc says {fig}, {file}#{path} is {value} (→ {shown})"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_figures_match_reference_files(doc: Path) -> None:
    wrong = [f"{doc.name}: {err}" for r in refs(doc) if (err := check(*r))]
    assert not wrong, "\n".join(wrong)


def test_speed_figures_are_tagged() -> None:
    # The INT8 speed figures in README and CONVERSION.md are backed by files; losing the tags loses the check.
    assert any("variants" in f for _, f, _, _ in refs(ROOT / "README.md"))
    assert len([1 for _, f, _, _ in refs(ROOT / "docs" / "CONVERSION.md") if "variants" in f]) >= 6


def test_the_checker_catches_a_wrong_figure(tmp_path: Path) -> None:
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"v": {"quant": {"ratio": 0.1717, "size": 12_540_000}}, "l": [3.0]}))
    rel = str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f)
    assert check("0.17", rel, "v.quant.ratio", 1) is None
    assert check("0.172", rel, "v.quant.ratio", 1) is None
    assert check("12.5", rel, "v.quant.size", 1e-6) is None
    assert check("3", rel, "l.0", 1) is None
    assert "doc says 0.29" in (check("0.29", rel, "v.quant.ratio", 1) or "")
    assert "has no" in (check("1", rel, "v.cpu.ratio", 1) or "")
    assert refs_text("x 0.17<!-- ref: a.json#b.c scale=1e-6 -->") == [("0.17", "a.json", "b.c", 1e-6)]

