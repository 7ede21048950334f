"""Training views of dataset samples on the loader path: each item is one sample augmented
(s4al/data/augment.py) from its own seed. The labelled view returns the image and its label; the
unlabelled view returns the weak view for the teacher and, from the same geometry, the strong
(colour-jittered) view for the student, with its answered regions; ClassMix is done later on the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from s4al.data.augment import Augment, color_jitter, geometric
from s4al.data.base import Box, SegmentationDataset
from s4al.data.classes import IGNORE_INDEX

Annotations = Mapping[int, Sequence[tuple[Box, np.ndarray]]]  # dataset index -> answered patches


def rasterize(annotations: Sequence[tuple[Box, np.ndarray]], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Answered region patches -> (label map with IGNORE elsewhere, annotated mask)."""
    label = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    for (y0, x0, y1, x1), patch in annotations:
        label[y0:y1, x0:x1] = patch
        mask[y0:y1, x0:x1] = 1
    return label, mask


def _image_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


class _View(torch.utils.data.Dataset):
    """Items are (index, seed) pairs from the step sampler; `regions` are answered regions by index."""

    def __init__(self, dataset: SegmentationDataset, aug: Augment, regions: Annotations | None = None):
        self.dataset, self.aug, self.regions = dataset, aug, regions or {}

    def __len__(self) -> int:
        return len(self.dataset)


class LabelledView(_View):
    """An index with answered regions (a pool image trained without SSL) gets them as its label,
    IGNORE elsewhere; any other index its dataset label."""

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = item
        rng = np.random.default_rng(seed)
        sample = self.dataset.load(index)
        label = sample.label
        if index in self.regions:
            label, _ = rasterize(self.regions[index], *label.shape)
        image, planes = geometric(_image_tensor(sample.image), torch.from_numpy(label)[None], [IGNORE_INDEX], rng, self.aug)
        return {"image": color_jitter(image, rng, self.aug), "label": planes[0]}


class UnlabelledView(_View):
    """Weak view (teacher), strong view (student), the annotator's labels where a pool image has
    answered regions, and validity (False on crop padding)."""

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = item
        rng = np.random.default_rng(seed)
        image = self.dataset.load_image(index)
        h, w = image.shape[:2]
        known_label, known = rasterize(self.regions.get(index, ()), h, w)
        planes = torch.from_numpy(np.stack([known_label, known, np.ones((h, w), np.uint8)]))
        weak, planes = geometric(_image_tensor(image), planes, [IGNORE_INDEX, 0, 0], rng, self.aug)
        return {
            "weak": weak,
            "strong": color_jitter(weak, rng, self.aug),
            "known_label": planes[0],
            "known": planes[1].bool(),
            "valid": planes[2].bool(),
        }


class StepView(torch.utils.data.Dataset):
    """A step's named draws from the step sampler -> its named batches: {name: the view's items
    of that draw, stacked}. Given to a DataLoader as its dataset with the sampler and batch_size
    None, each worker builds whole steps."""

    def __init__(self, view: LabelledView | UnlabelledView):
        self.view = view

    def __getitem__(self, draw: Mapping[str, Sequence[tuple[int, int]]]) -> dict[str, dict[str, torch.Tensor]]:
        return {name: default_collate([self.view[item] for item in items]) for name, items in draw.items()}
