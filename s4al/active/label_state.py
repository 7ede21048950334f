"""Who is labelled at one moment of a run, by dataset index, read once from the ledger.

Whole images (initially labelled, or bought whole by an image-level baseline) are labelled; every
other image is in the pool, where answered regions label some of its pixels. A box once asked
(answered, waiting or skipped) is never asked again. The labelled pixels are those of whole images
and of answered boxes (overlaps once): waiting and skipped boxes label nothing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from s4al.active.ledger import Ledger, Region
from s4al.acquisition.regions import labelled_fraction, labelled_pixel_count
from s4al.data.base import Box


@dataclass(frozen=True)
class LabelState:
    sizes: dict[int, tuple[int, int]]  # (height, width) of every image
    whole: list[int]  # fully labelled images
    pool: list[int]  # every other image: the unlabelled stream and the candidates for questions
    initial_pool: list[int]  # the images not labelled by the dataset (at the start or by a mask given since):
    # the base of a per-cycle budget
    asked: dict[int, list[Box]]  # every box asked so far, by image
    answered: dict[int, list[Region]]  # the answered regions, by pool image
    ledger: Ledger = field(repr=False, compare=False)

    @classmethod
    def read(cls, ledger: Ledger, index_of: Mapping[str, int]) -> "LabelState":
        images = ledger.images()
        whole = {r.image_id for r in images if r.fully_labelled}
        asked: dict[int, list[Box]] = defaultdict(list)
        answered: dict[int, list[Region]] = defaultdict(list)
        for region in ledger.regions():
            asked[index_of[region.image_id]].append(region.box)
            if region.state == "answered" and region.image_id not in whole:  # a mask given later labels it all
                answered[index_of[region.image_id]].append(region)
        return cls(
            sizes={index_of[r.image_id]: (r.height, r.width) for r in images},
            whole=sorted(index_of[r.image_id] for r in images if r.fully_labelled),
            pool=sorted(index_of[r.image_id] for r in images if not r.fully_labelled),
            initial_pool=sorted(index_of[r.image_id] for r in images if not r.initial),
            asked=dict(asked),
            answered=dict(answered),
            ledger=ledger,
        )

    @cached_property
    def answers(self) -> dict[int, list[tuple[Box, np.ndarray]]]:
        """The answered regions' label patches, by image (read from disk on first use)."""
        return {index: [(r.box, self.ledger.patch(r)) for r in regions] for index, regions in self.answered.items()}

    @property
    def labelled_pixels(self) -> int:
        return labelled_pixel_count(self.sizes, set(self.whole), self._answered_boxes)

    @property
    def labelled_fraction(self) -> float:
        """Labelled pixels over all pixels of the images (the paper's "% of data")."""
        return labelled_fraction(self.sizes, set(self.whole), self._answered_boxes)

    @property
    def _answered_boxes(self) -> dict[int, list[Box]]:
        return {index: [r.box for r in regions] for index, regions in self.answered.items()}
