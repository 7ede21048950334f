"""A split decoded once into uint8 tensors on the device. For training, the train split holding
exactly what training may see of each image: the label of a labelled image (of a partially labelled
one, its answered regions with IGNORE elsewhere) and the answered regions of a pool image; a pool
image's own label is never loaded. For inference (pool scoring, evaluation; s4al/inference.py), a
whole split, its labels only where evaluation needs them.

All images must have the same size (they are rows of one tensor)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from s4al import distributed
from s4al.config import FastMode
from s4al.data.base import SegmentationDataset
from s4al.data.classes import IGNORE_INDEX
from s4al.data.views import Annotations, rasterize

DECODE_BATCH = 16  # images decoded (by loader workers) per copy to the device


class MixedImageSizes(ValueError):
    """The device cache holds one size; the loader path trains on any."""


def common_size(dataset: SegmentationDataset, indices: Sequence[int]) -> tuple[int, int]:
    """The (H, W) every image of `indices` has, or MixedImageSizes naming two that differ."""
    first = tuple(dataset.image_size(indices[0]))
    for i in indices:
        size = tuple(dataset.image_size(i))
        if size != first:
            raise MixedImageSizes(
                f"{dataset.image_id(i)} is {size[0]}x{size[1]} but {dataset.image_id(indices[0])} is "
                f"{first[0]}x{first[1]}: the device cache needs one image size; set dataset.resize, "
                "or train.fast: off to train from loader workers"
            )
    return first


class _Decoded(torch.utils.data.Dataset):
    """(row, image, label or None): pool rows decode the image alone."""

    def __init__(self, dataset: SegmentationDataset, indices: Sequence[int], labelled: set[int]):
        self.dataset, self.indices, self.labelled = dataset, indices, labelled

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, row: int):
        index = self.indices[row]
        if index not in self.labelled:
            return row, self.dataset.load_image(index), None
        sample = self.dataset.load(index)
        return row, sample.image, sample.label


def _collate(items):
    rows, images, labels = zip(*items)
    return list(rows), np.stack(images), labels


class DeviceCache:
    """images (R, 3, H, W), labels (R, H, W) and, per row, its answered regions as
    known_label / known planes, all uint8 on `device`; `rows(indices)` maps dataset indices to rows.

    labelled: indices whose label training reads; partial: answered regions that replace the label
    of a labelled index (SSL off); pool: indices read without a label; annotations: their answered
    regions (SSL on)."""

    def __init__(
        self,
        dataset: SegmentationDataset,
        labelled: Sequence[int],
        pool: Sequence[int],
        device: torch.device,
        partial: Annotations | None = None,
        annotations: Annotations | None = None,
        num_workers: int = 0,
    ):
        labelled = set(labelled)
        indices = sorted(labelled | set(pool))
        h, w = self.size = common_size(dataset, indices)
        self.device = device
        self._row = np.full(len(dataset), -1, dtype=np.int64)
        self._row[indices] = np.arange(len(indices))
        self.images = torch.empty((len(indices), 3, h, w), dtype=torch.uint8, device=device)
        self.labels = torch.full((len(indices), h, w), IGNORE_INDEX, dtype=torch.uint8, device=device)
        partial = partial or {}
        self._decode(dataset, indices, labelled - set(partial), num_workers)  # a partial label replaces its own
        for index, patches in partial.items():
            if index in labelled:
                self.labels[self._row[index]] = torch.from_numpy(rasterize(patches, h, w)[0]).to(device)
        self._regions(annotations or {}, h, w)

    def _decode(self, dataset: SegmentationDataset, indices: list[int], labelled: set[int], num_workers: int) -> None:
        loader = torch.utils.data.DataLoader(
            _Decoded(dataset, indices, labelled), batch_size=DECODE_BATCH, num_workers=num_workers, collate_fn=_collate
        )
        for rows, images, labels in loader:
            at = torch.tensor(rows, device=self.device)
            self.images[at] = torch.from_numpy(images).permute(0, 3, 1, 2).to(self.device)
            for row, label in zip(rows, labels):
                if label is not None:
                    self.labels[row] = torch.from_numpy(label).to(self.device)

    def _regions(self, annotations: Annotations, h: int, w: int) -> None:
        """Slot 0 is 'nothing answered'; slot k + 1 holds the k-th annotated index's planes."""
        answered = [i for i in sorted(annotations) if self._row[i] >= 0]
        self.known_label = torch.full((len(answered) + 1, h, w), IGNORE_INDEX, dtype=torch.uint8, device=self.device)
        self.known = torch.zeros((len(answered) + 1, h, w), dtype=torch.bool, device=self.device)
        slot = np.zeros(len(self._row), dtype=np.int64)
        for k, index in enumerate(answered, start=1):
            label, mask = rasterize(annotations[index], h, w)
            self.known_label[k] = torch.from_numpy(label).to(self.device)
            self.known[k] = torch.from_numpy(mask).bool().to(self.device)
            slot[index] = k
        self._slot = slot

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        rows = self._row[np.asarray(indices, dtype=np.int64)]
        if (rows < 0).any():
            raise KeyError(f"dataset indices not in the device cache: {np.asarray(indices)[rows < 0].tolist()}")
        return rows

    def slots(self, indices: Sequence[int]) -> np.ndarray:
        """Rows of known_label / known for dataset indices (0: nothing answered)."""
        return self._slot[np.asarray(indices, dtype=np.int64)]

    def batches(
        self, indices: Sequence[int], batch_size: int, labels: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[int]]]:
        """For inference: (uint8 (N, 3, H, W) images, uint8 (N, H, W) labels or None without `labels`,
        dataset indices) of `indices` in order, the batches shared among torch.distributed ranks as
        image_batches shares them."""
        indices = list(indices)
        rows = torch.from_numpy(self.rows(indices)).to(self.device, non_blocking=True)  # waits for nothing
        for k in range(0, len(indices), batch_size)[distributed.rank() :: distributed.world_size()]:
            at = rows[k : k + batch_size]
            label = self.labels.index_select(0, at) if labels else None
            yield self.images.index_select(0, at), label, indices[k : k + batch_size]


def fast_path_asked(fast: FastMode, device: torch.device) -> bool:
    """train.fast on, or auto on a CUDA device."""
    return fast == "on" or (fast == "auto" and device.type == "cuda")
