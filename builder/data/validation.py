"""validate_dataset: everything that would silently ruin training, reported with file and line.

`ValidationReport.usable` is False when any error-severity problem exists; the trainer then refuses to start.
"""

from __future__ import annotations

from pathlib import Path

from builder.data.layout import DatasetError
from builder.data.loading import load_dataset
from builder.data.reading import read_split
from builder.data.report import Problem, SplitStats, ValidationReport


def validate_dataset(path: Path | str, check_images: bool = True) -> ValidationReport:
    """Check a dataset for everything that would silently ruin training; never raises for bad data."""
    report = ValidationReport(path=str(path))
    try:
        ds = load_dataset(path)
    except DatasetError as exc:
        report.problems.append(Problem(severity="error", code="unreadable_dataset", message=str(exc)))
        return report
    report.format = ds.format
    report.class_names = ds.class_names
    for required in ("train", "val"):
        if required not in ds.splits:
            report.problems.append(
                Problem(severity="error", code="missing_split", message=f"no {required!r} split found", file=str(ds.root))
            )
    seen: dict[str, tuple[str, Path]] = {}
    for split in ds.splits:
        stats = SplitStats()
        read_split(ds, split, collect=report.problems, stats=stats, check_images=check_images, seen=seen)
        report.splits[split] = stats
        if stats.images == 0:
            report.problems.append(
                Problem(severity="error", code="empty_split", message=f"{split!r} split has no images", file=str(ds.root))
            )
        elif stats.boxes == 0 and split in ("train", "val"):
            report.problems.append(
                Problem(severity="error", code="no_boxes", message=f"{split!r} split has no labelled boxes at all",
                        file=str(ds.root))
            )
    return report
