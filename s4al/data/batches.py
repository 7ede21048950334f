"""Whole images in batches for inference (evaluation, pool scoring, pre-annotation): images are
batched only with images of the same size, so no padding touches a prediction; under
torch.distributed each rank takes its share of the batches. And how a batch's host tensors reach
the device."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from s4al import distributed
from s4al.data.base import SegmentationDataset


def same_size_batches(
    dataset: SegmentationDataset, batch_size: int, indices: Sequence[int] | None = None
) -> list[list[int]]:
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in range(len(dataset)) if indices is None else indices:
        by_size[tuple(dataset.image_size(i))].append(i)
    return [group[k : k + batch_size] for group in by_size.values() for k in range(0, len(group), batch_size)]


class _Indexed(torch.utils.data.Dataset):
    """(index, image, label or None): without `labels` only the image is decoded."""

    def __init__(self, dataset: SegmentationDataset, labels: bool):
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if not self.labels:
            return index, self.dataset.load_image(index), None
        sample = self.dataset.load(index)
        return index, sample.image, sample.label


def _collate(items):
    indices, images, labels = zip(*items)
    images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    labels = None if labels[0] is None else torch.from_numpy(np.stack(labels))
    return images, labels, list(indices)


def image_batches(
    dataset: SegmentationDataset,
    batch_size: int,
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
    shard: bool = False,
    labels: bool = True,
    pin_memory: bool = False,
):
    """(uint8 (N,3,H,W) images, uint8 (N,H,W) labels or None without `labels`, dataset indices),
    same-size batches, in order; with `shard`, this rank's share of the batches under torch.distributed."""
    batches = same_size_batches(dataset, batch_size, indices)
    if shard:
        batches = batches[distributed.rank() :: distributed.world_size()]
    return torch.utils.data.DataLoader(
        _Indexed(dataset, labels),
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`, copied from the host without waiting for it: on CUDA through pinned
    memory (a copy from pageable memory may first wait for everything queued on the GPU to finish)."""
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = images.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)
