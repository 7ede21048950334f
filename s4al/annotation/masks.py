"""What an answer file holds once read: per image, a class-id map with 255 where nothing was painted,
read or decoded when first used (an import leaves a painting it has imported before unread).

Two readers produce it: `label_studio.read_export` (a Label Studio JSON export) and
`read_png_masks` (one PNG per image, named IMAGE_ID.png, listed by `png_masks`: single-channel class
ids, or painted in the class colours, indexed or RGB(A), transparent or in the void colour where
unpainted)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from s4al.data.base import DatasetError
from s4al.data.classes import IGNORE_INDEX
from s4al.data.folder import COLOUR_MODES, ColourDecoder, palette_labels
from s4al.data.io import image_mode, read_indexed, system_file
from s4al.errors import S4alError
from s4al.text import first_of

UNPAINTED = IGNORE_INDEX
MIN_PAINTED_SHARE = 0.5  # of a region's pixels, for the region to count as answered
# Image formats a mask must not come in: lossy ones change class ids at the edges, and none is read.
NOT_PNG_IMAGES = (".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class AnswerError(S4alError):
    """A refused answer file; nothing was written. The message names the file and the problem."""


@dataclass(frozen=True)
class PaintedImage:
    source: str  # where it came from, for messages: a file, or a file and a Label Studio task id
    image_id: str
    paint: Callable[[], np.ndarray] = field(repr=False, compare=False)  # reads or decodes `labels`
    region_ids: tuple[int, ...] | None = None  # the regions it answers; None: every region of the image
    cycle: int | None = None  # the cycle its task was made for (Label Studio tasks)
    declined: bool = False  # the annotator skipped the whole task: its asked regions are skipped
    # region id -> (y0, x0, y1, x1): the asked-region rectangles the answer carries (Label Studio tasks)
    asked_boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    hand_drawn: int = 0  # other rectangles in the answer: drawn by hand, ignored
    painted_at: str | None = None  # when it was last painted (UTC, ISO 8601), where its source tells
    run_id: str | None = None  # the run whose task it answers (Label Studio tasks made since runs had one)

    @cached_property
    def labels(self) -> np.ndarray:
        """(H, W) uint8 class ids, UNPAINTED where nothing was painted."""
        return self.paint()


def utc_time(text: object) -> str | None:
    """An ISO 8601 time as UTC in one form (a time without zone is taken as UTC); None for anything
    else: a missing or unreadable time only leaves an answer's age unknown."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
        return _utc(moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment)
    except (ValueError, OverflowError):  # OverflowError: a zone that moves it before year 1 or past 9999
        return None


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


BRUSH_EXPORT_NAME = re.compile(r"task-\d+-annotation-\d+-by-")  # Label Studio's "Brush labels to PNG" files


def png_masks(folder: Path) -> tuple[list[Path], list[str]]:
    """The masks of a folder of answers (IMAGE_ID.png, the suffix in any case) and the names of its
    other entries, which are not read; an image in another format, or a mask's broken link, is
    refused, naming it."""
    entries = sorted(folder.iterdir())
    images = [path.name for path in entries if path.suffix.lower() in NOT_PNG_IMAGES]
    if images:
        raise AnswerError(f"{folder}: masks must be lossless PNG (JPEG changes class ids at the edges), not "
                          f"{first_of(images)}; save them as IMAGE_ID.png")
    _refuse_broken_links(entries)
    masks = [path for path in entries if _is_mask(path)]
    if not masks:
        raise AnswerError(f"{folder}: no .png masks in this folder (expected one IMAGE_ID.png per image)")
    brush_export = [path.name for path in masks if BRUSH_EXPORT_NAME.match(path.name)]
    if brush_export:
        raise AnswerError(f"{folder}: {first_of(brush_export, 2)}: Label Studio's brush-label PNG export (a file per "
                          "class per annotation), not masks named IMAGE_ID.png; import the project's JSON export "
                          "(Export -> JSON) instead")
    return masks, [path.name for path in entries if not _is_mask(path)]


def _is_mask(path: Path) -> bool:
    return path.suffix.lower() == ".png" and path.is_file() and not system_file(path)


def _refuse_broken_links(entries: list[Path]) -> None:
    """A mask's link whose target is gone would leave its regions asked, the link named among the
    files that are not masks."""
    broken = [path for path in entries if path.suffix.lower() == ".png" and path.is_symlink() and not path.exists()]
    if broken:
        raise AnswerError(f"{broken[0]}: a link to {os.readlink(broken[0])}, which does not exist; mend the link "
                          "or remove it")


def read_png_masks(paths: list[Path], colours: ColourDecoder | None = None) -> Iterator[PaintedImage]:
    """The masks at `paths`, read one at a time, each painted when its file was last written;
    `colours`: the run's class colours, which an indexed mask may paint (palette_labels)."""
    for path in paths:
        modified = _utc(datetime.fromtimestamp(path.stat().st_mtime, timezone.utc))
        yield PaintedImage(str(path), path.stem, partial(_read_mask, path, colours), painted_at=modified)


def _read_mask(path: Path, colours: ColourDecoder | None) -> np.ndarray:
    """Class ids; an indexed mask painting the class colours (a paint program's indexed export
    numbers its colours in its own order) by its colours, one under the PASCAL VOC colour map by
    index, as a dataset's own masks are read (palette_labels); an RGB(A) one by its colours. A
    transparent pixel is unpainted."""
    try:
        mode = image_mode(path)
        if mode in COLOUR_MODES:
            return _colour_mask(path, colours)
        indices, hidden, palette = read_indexed(path)
        if hidden is not None:  # as an editor saves a transparent background: unpainted
            indices[hidden] = UNPAINTED
        if colours is None or mode != "P":
            return indices
        labels = palette_labels(indices, palette, colours, UNPAINTED, path,
                                "save it as a greyscale PNG of class ids, or painted in the class colours",
                                void_label=UNPAINTED)
        return indices if labels is None else labels
    except DatasetError as err:
        raise AnswerError(str(err)) from None


def _colour_mask(path: Path, colours: ColourDecoder | None) -> np.ndarray:
    """The class ids an RGB(A) mask paints in the class colours (the void colour, as transparent
    pixels, unpainted); any other colour is refused."""
    if colours is None:
        raise AnswerError(f"{path}: painted in colours, but this run keeps no class colours (it was made before "
                          "s4al kept them): save it as a greyscale PNG of class ids")
    return colours.read_mask(path)  # void, as transparent pixels, is UNPAINTED
