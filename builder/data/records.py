"""The in-memory view of a loaded detection dataset: its layout (builder.data.layout) and its boxes, per image."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from builder.data.layout import SPLIT_ALIASES, DatasetLayout, Item
from builder.data.reading import read_split


@dataclass
class Dataset(DatasetLayout):
    _cache: dict[str, list[Item]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, layout: DatasetLayout) -> Dataset:
        return cls(**{f.name: getattr(layout, f.name) for f in fields(layout)})

    def items(self, split: str) -> list[Item]:
        """Every image of the split with its boxes (images that cannot be read are skipped), read once."""
        split = SPLIT_ALIASES.get(split, split)
        if split not in self._cache:
            items, _ = read_split(self, split, collect=None)
            self._cache[split] = items
        return self._cache[split]
