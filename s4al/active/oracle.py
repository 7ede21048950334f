"""Who answers asked regions: the Annotator interface and the ground-truth oracle used in experiments."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from s4al.active.ledger import Ledger, Region
from s4al.data.base import Box


class Annotator(Protocol):
    def answer(self, ledger: Ledger, regions: Sequence[Region]) -> int:
        """Write the labels of `regions` into `ledger`; return how many were answered."""
        ...


BY_DATASET_MASK = "dataset-mask"  # who answered regions of a pool image given a mask in the dataset since


class GroundTruthOracle:
    """Reveals the dataset label inside each asked box, void/ignore pixels (255) included: the paper
    counts them as labelling information. `label_of(image_id)` returns the full (H, W) uint8 label
    in the coordinates the image was registered with."""

    def __init__(self, label_of: Callable[[str], np.ndarray], name: str = "oracle") -> None:
        self._label_of = label_of
        self.name = name  # who answered, in the ledger

    def answer(self, ledger: Ledger, regions: Sequence[Region], overwrite: bool = False) -> int:
        """`overwrite`: regions answered before are answered again (their stored answer lost)."""
        regions_by_image: dict[str, list[Region]] = defaultdict(list)
        for region in regions:
            regions_by_image[region.image_id].append(region)
        answers = []
        for image_id, image_regions in regions_by_image.items():
            label = np.asarray(self._label_of(image_id))
            if label.shape != ledger.image_size(image_id):
                raise ValueError(
                    f"label of '{image_id}' is {label.shape}, the ledger registered {ledger.image_size(image_id)}"
                )
            # copy() so the crops do not keep every full-resolution label alive until the write
            answers += [(region.region_id, _crop(label, region.box).copy()) for region in image_regions]
        ledger.answer_many(answers, by=self.name, overwrite=overwrite)
        return len(answers)


def _crop(label: np.ndarray, box: Box) -> np.ndarray:
    y0, x0, y1, x1 = box
    return label[y0:y1, x0:x1]
