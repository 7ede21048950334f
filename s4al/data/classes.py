"""Class names, display colours and the ignore index shared by every dataset."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from s4al.errors import S4alError

IGNORE_INDEX = 255


def class_pixel_counts(labels: Iterable[np.ndarray]) -> np.ndarray:
    """(256,) int64 pixels of each raw value over the uint8 label maps (class ids, IGNORE_INDEX)."""
    counts = np.zeros(256, dtype=np.int64)
    for label in labels:
        counts += np.bincount(label.ravel(), minlength=256)
    return counts


@dataclass(frozen=True)
class ClassSet:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise S4alError(f"{len(self.names)} class names but {len(self.colors)} colours")
        if len(self.names) >= IGNORE_INDEX:
            raise S4alError(f"at most {IGNORE_INDEX - 1} classes are supported")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup table: class id -> colour, ignore -> black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.colors, dtype=np.uint8)
        return table

    def colorize(self, label: np.ndarray) -> np.ndarray:
        return self.palette()[label]
