"""What an answer file holds once read: per image, a class-id map with 255 where nothing was painted.

Two readers produce it: `label_studio.read_export` (a Label Studio JSON export) and
`read_png_folder` (one single-channel class-id PNG per image, named IMAGE_ID.png)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s4al.data.base import DatasetError
from s4al.data.classes import IGNORE_INDEX
from s4al.data.io import read_label
from s4al.errors import S4alError

UNPAINTED = IGNORE_INDEX
MIN_PAINTED_SHARE = 0.5  # of a region's pixels, for the region to count as answered


class AnswerError(S4alError):
    """A refused answer file; nothing was written. The message names the file and the problem."""


@dataclass(frozen=True)
class PaintedImage:
    source: str  # where it came from, for messages: a file, or a file and a Label Studio task id
    image_id: str
    labels: np.ndarray  # (H, W) uint8 class ids, UNPAINTED where nothing was painted
    region_ids: tuple[int, ...] | None = None  # the regions it answers; None: every region of the image
    cycle: int | None = None  # the cycle its task was made for (Label Studio tasks)
    declined: bool = False  # the annotator skipped the whole task: its asked regions are skipped
    rectangles: tuple[tuple[int, int, int, int], ...] = ()  # rectangles in the answer, (y0, x0, y1, x1)


def read_png_folder(folder: Path) -> Iterator[PaintedImage]:
    """Every FOLDER/IMAGE_ID.png, read one at a time; other files are not read."""
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise AnswerError(f"{folder}: no .png masks in this folder (expected one IMAGE_ID.png per image)")
    for path in paths:
        yield PaintedImage(str(path), path.stem, _read_mask(path))


def _read_mask(path: Path) -> np.ndarray:
    try:
        return read_label(path)
    except DatasetError as err:
        raise AnswerError(str(err)) from None
