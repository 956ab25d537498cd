"""The validation report: every problem found in a dataset, with file and line, and per-split counts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class Problem(BaseModel):
    severity: Literal["error", "warning"]
    code: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}"
        return f"{self.severity.upper():7s} {self.code:22s} {where + ': ' if where else ''}{self.message}"


class SplitStats(BaseModel):
    images: int = 0
    readable_images: int = 0
    labelled_images: int = 0
    boxes: int = 0
    per_class: dict[str, int] = Field(default_factory=dict)


class ValidationReport(BaseModel):
    path: str
    format: str | None = None
    class_names: list[str] = Field(default_factory=list)
    splits: dict[str, SplitStats] = Field(default_factory=dict)
    problems: list[Problem] = Field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def usable(self) -> bool:
        return not self.errors

    def format_text(self, max_problems: int = 50) -> str:
        lines = [f"dataset {self.path} ({self.format or 'unknown format'}), classes: {self.class_names}"]
        for split, s in self.splits.items():
            per = ", ".join(f"{k} {v}" for k, v in s.per_class.items())
            lines.append(
                f"  {split:5s}: {s.images} images ({s.readable_images} readable, {s.labelled_images} with labels), "
                f"{s.boxes} boxes [{per}]"
            )
        shown = sorted(self.problems, key=lambda p: p.severity != "error")[:max_problems]
        for p in shown:
            lines.append(f"  {p}")
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more problems")
        verdict = "usable" if self.usable else "NOT usable"
        lines.append(f"{len(self.errors)} errors, {len(self.warnings)} warnings: {verdict}")
        return "\n".join(lines)


def add_problem(collect: list[Problem] | None, severity: str, code: str, message: str,
                file: Path | str | None = None, line: int | None = None) -> None:
    """Append a problem when collecting (validation); plain loading passes None and ignores them."""
    if collect is not None:
        collect.append(Problem(severity=severity, code=code, message=message,  # type: ignore[arg-type]
                               file=str(file) if file is not None else None, line=line))
