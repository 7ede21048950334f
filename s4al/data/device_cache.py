"""A split decoded once into uint8 tensors on the device. For training, the train split holding
exactly what training may see of each image: the label of a labelled image (of a partially labelled
one, its answered regions with IGNORE elsewhere) and the answered regions of a pool image; a pool
image's own label is never loaded. For inference (pool scoring, evaluation; s4al/inference.py), a
whole split, its labels only where evaluation needs them.

A split's images are on a device once per process (SplitImages), however many caches read them: a
cycle's training and the pool scoring after it share one copy. Labels and answered regions are
per cache, a plane per labelled or answered image only. A cache is built only where it fits: at
most DEVICE_SHARE of the device's free memory (of the host's available memory on a CPU).

All images must have the same size (they are rows of one tensor)."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from s4al.errors import S4alError, S4alWarning
from s4al import distributed
from s4al.config import FastMode
from s4al.data.base import SegmentationDataset, stops_left_to_the_main_process
from s4al.data.batches import host_to_device
from s4al.data.classes import IGNORE_INDEX
from s4al.data.augment import WINDOWED_AUGMENT_PIXELS
from s4al.data.views import Annotations, rasterize

DECODE_BATCH = 16  # images decoded (by loader workers) per copy to the device
DEVICE_SHARE = 0.5  # of the free memory a cache may take: training's activations need the rest
GIB = 2**30


class MixedImageSizes(S4alError):
    """The device cache holds one size; the loader path trains on any."""


class DeviceMemoryShort(S4alError):
    """The cache would take more than DEVICE_SHARE of the device's free memory."""


class LargeImages(S4alError):
    """Images over WINDOWED_AUGMENT_PIXELS: the device path scales each whole, the loader path reads
    only the window of its crop."""


def common_size(dataset: SegmentationDataset, indices: Sequence[int],
                needs: str = "the device cache needs one image size; set dataset.resize, or train.fast: off to "
                             "train from loader workers") -> tuple[int, int]:
    """The (H, W) every image of `indices` has, or MixedImageSizes naming two that differ and what
    `needs` one size."""
    first = tuple(dataset.image_size(indices[0]))
    for i in indices:
        size = tuple(dataset.image_size(i))
        if size != first:
            raise MixedImageSizes(f"{dataset.image_id(i)} is {size[0]}x{size[1]} but {dataset.image_id(indices[0])} is "
                                  f"{first[0]}x{first[1]}: {needs}")
    return first


def free_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device (with the blocks this process's allocator holds unused, which the
    device counts as taken), or available to this host's processes; None where unknown."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + unused
    meminfo = Path("/proc/meminfo")
    if device.type != "cpu" or not meminfo.exists():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


class SplitImages:
    """A split's images as rows of one uint8 (R, 3, H, W) tensor on one device, rows added as
    caches ask for more images; one per split and process (`split_images`)."""

    def __init__(self, device: torch.device, size: tuple[int, int], length: int):
        self.device, self.size = device, size
        self.images = torch.empty((0, 3, *size), dtype=torch.uint8, device=device)
        self.row = np.full(length, -1, dtype=np.int64)

    def missing(self, indices: Sequence[int]) -> list[int]:
        return sorted(i for i in set(indices) if self.row[i] < 0)

    def add_rows(self, indices: Sequence[int]) -> None:
        """Rows, not yet filled, for `indices` (none of them held)."""
        if not indices:
            return  # growing would copy every held image for nothing
        held = len(self.images)
        self.row[list(indices)] = np.arange(held, held + len(indices))
        grown = torch.empty((held + len(indices), 3, *self.size), dtype=torch.uint8, device=self.device)
        grown[:held] = self.images  # the held rows copied once: at the peak, old and grown (cache_bytes)
        self.images = grown

    def forget(self, indices: Sequence[int]) -> None:
        self.row[list(indices)] = -1

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        rows = self.row[np.asarray(indices, dtype=np.int64)]
        if (rows < 0).any():
            raise KeyError(f"dataset indices not in the device cache: {np.asarray(indices)[rows < 0].tolist()}")
        return rows


_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # dataset -> SplitImages


def split_images(dataset: SegmentationDataset, device: torch.device, size: tuple[int, int]) -> SplitImages:
    """The split's images on `device` held in this process (a new, empty holder for another device
    or size), kept while the dataset lives."""
    held = _SPLITS.get(dataset)
    if held is None or held.device != device or held.size != size:
        held = _SPLITS[dataset] = SplitImages(device, size, len(dataset))
    return held


def cache_bytes(
    dataset: SegmentationDataset, labelled: Sequence[int], pool: Sequence[int], device: torch.device,
    answered: int = 0, size: tuple[int, int] | None = None,
) -> int:
    """What a DeviceCache of these images (of `size`, their common_size where known) takes on `device`
    at its peak: the split's images grown by those not held yet (the held ones copied into the grown
    tensor, SplitImages.add_rows), a label plane per labelled image, two planes per answered image
    (and one empty slot)."""
    indices = sorted(set(labelled) | set(pool))
    h, w = size or common_size(dataset, indices)
    held = _SPLITS.get(dataset)
    if held is None or held.device != device or held.size != (h, w):
        images = len(indices)
    else:
        new = len(held.missing(indices))
        images = len(held.images) + new if new else 0
    return h * w * (3 * images + len(set(labelled)) + 2 * (answered + 1))


def check_fits(nbytes: int, device: torch.device, what: str) -> None:
    """DeviceMemoryShort unless `nbytes` is within DEVICE_SHARE of the free memory of `device`, on
    every rank: ranks that chose apart would split a split's batches apart."""
    free = free_memory(device)
    if free is not None:
        free = distributed.all_min(free, device)
    if free is not None and nbytes > DEVICE_SHARE * free:
        raise DeviceMemoryShort(
            f"{what} would take {nbytes / GIB:.1f} GiB of {device}, which has {free / GIB:.1f} GiB free "
            f"(a cache takes at most {DEVICE_SHARE:.0%} of it): set dataset.resize, or train.fast: off "
            "to read from loader workers"
        )


class _Decoded(torch.utils.data.Dataset):
    """(index, image or None, label or None) as each index needs."""

    def __init__(self, dataset: SegmentationDataset, indices: list[int], images: set[int], labels: set[int]):
        self.dataset, self.indices, self.images, self.labels = dataset, indices, images, labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        index = self.indices[k]
        if index not in self.labels:
            return index, self.dataset.load_image(index), None
        if index not in self.images:
            return index, None, self.dataset.load_label(index)
        sample = self.dataset.load(index)
        return index, sample.image, sample.label


def _as_list(items: list) -> list:
    return items


class DeviceCache:
    """A split's images (shared, SplitImages) with, per labelled image, its label and, per answered
    pool image, its answered regions as known_label / known planes, all on `device`.

    labelled: indices whose label training reads; partial: answered regions that replace the label
    of a labelled index (SSL off); pool: indices read without a label; annotations: their answered
    regions (SSL on). DeviceMemoryShort if it does not fit (check_fits)."""

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
        partial, annotations = partial or {}, annotations or {}
        labelled, indices = sorted(set(labelled)), sorted(set(labelled) | set(pool))
        wanted = set(indices)
        answered = [i for i in sorted(annotations) if i in wanted]
        h, w = self.size = common_size(dataset, indices)
        self.device = device
        check_fits(cache_bytes(dataset, labelled, pool, device, len(answered), self.size), device,
                   f"the device cache of {len(indices)} images of {h}x{w}")
        self._split = split_images(dataset, device, self.size)
        self._label_row = dict(zip(labelled, range(len(labelled))))
        self.labels = torch.full((len(labelled), h, w), IGNORE_INDEX, dtype=torch.uint8, device=device)
        new_images = self._split.missing(indices)
        self._split.add_rows(new_images)
        decoded_labels = set(labelled) - set(partial)  # a partial label replaces its own
        try:
            self._decode(dataset, sorted({*new_images, *decoded_labels}), set(new_images), decoded_labels, num_workers)
        except BaseException:
            self._split.forget(new_images)  # rows never filled must not pass for decoded images
            raise
        for index, patches in partial.items():
            if index in self._label_row:
                self.labels[self._label_row[index]] = torch.from_numpy(rasterize(patches, h, w)[0]).to(device)
        self._regions(dataset, annotations, answered)

    @property
    def images(self) -> torch.Tensor:
        """(R, 3, H, W) uint8: the split's images held on the device (rows: `rows`)."""
        return self._split.images

    def _decode(self, dataset: SegmentationDataset, indices: list[int], images: set[int], labels: set[int],
                num_workers: int) -> None:
        loader = torch.utils.data.DataLoader(
            _Decoded(dataset, indices, images, labels), batch_size=DECODE_BATCH, num_workers=num_workers,
            collate_fn=_as_list, worker_init_fn=stops_left_to_the_main_process(),
        )
        for items in loader:
            with_image = [(index, image) for index, image, _ in items if image is not None]
            if with_image:
                at = torch.from_numpy(self._split.rows([index for index, _ in with_image])).to(self.device)
                stacked = torch.from_numpy(np.stack([image for _, image in with_image]))
                self._split.images[at] = stacked.permute(0, 3, 1, 2).to(self.device)
            for index, _, label in items:
                if label is not None:
                    self.labels[self._label_row[index]] = torch.from_numpy(label).to(self.device)

    def _regions(self, dataset: SegmentationDataset, annotations: Annotations, answered: list[int]) -> None:
        """Slot 0 is 'nothing answered'; slot k + 1 holds the k-th answered index's planes."""
        h, w = self.size
        self.known_label = torch.full((len(answered) + 1, h, w), IGNORE_INDEX, dtype=torch.uint8, device=self.device)
        self.known = torch.zeros((len(answered) + 1, h, w), dtype=torch.bool, device=self.device)
        slot = np.zeros(len(dataset), dtype=np.int64)
        for k, index in enumerate(answered, start=1):
            label, mask = rasterize(annotations[index], h, w)
            self.known_label[k] = torch.from_numpy(label).to(self.device)
            self.known[k] = torch.from_numpy(mask).bool().to(self.device)
            slot[index] = k
        self._slot = slot

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """Rows of `images` for dataset indices."""
        return self._split.rows(indices)

    def label_rows(self, indices: Sequence[int]) -> np.ndarray:
        """Rows of `labels` for labelled dataset indices."""
        try:
            return np.array([self._label_row[i] for i in indices], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"dataset index {err.args[0]} has no label in the device cache") from None

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
        rows = host_to_device(torch.from_numpy(self.rows(indices)), self.device)
        label_rows = host_to_device(torch.from_numpy(self.label_rows(indices)), self.device) if labels else None
        for k in range(0, len(indices), batch_size)[distributed.rank() :: distributed.world_size()]:
            label = self.labels.index_select(0, label_rows[k : k + batch_size]) if labels else None
            yield self.images.index_select(0, rows[k : k + batch_size]), label, indices[k : k + batch_size]


def fast_path_asked(fast: FastMode, device: torch.device) -> bool:
    """train.fast on, or auto on a CUDA device."""
    return fast == "on" or (fast == "auto" and device.type == "cuda")


def training_on_device(
    fast: FastMode, device: torch.device, dataset: SegmentationDataset, labelled: Sequence[int],
    pool: Sequence[int], answered: int = 0,
) -> bool:
    """Whether training reads a DeviceCache (the fast path): train.fast on, or auto on a CUDA
    device. auto falls back to loader workers for images of mixed sizes, which the cache cannot
    hold, images over WINDOWED_AUGMENT_PIXELS, which it would scale whole for each sample, or a cache
    that would not fit (check_fits), with a warning; on refuses them."""
    if not fast_path_asked(fast, device):
        return False
    try:
        h, w = size = common_size(dataset, [*labelled, *pool])
        if h * w > WINDOWED_AUGMENT_PIXELS:
            raise LargeImages(f"images of {h}x{w} are over {WINDOWED_AUGMENT_PIXELS:,} pixels: the device path "
                              "scales each whole image for its sample, loader workers read only the window its crop "
                              "needs")
        check_fits(cache_bytes(dataset, labelled, pool, device, answered, size), device, "the training cache")
    except (MixedImageSizes, DeviceMemoryShort, LargeImages) as err:
        if fast == "on":
            raise type(err)(f"train.fast is on: {err}") from None
        if distributed.is_main():  # every rank falls back alike (check_fits agrees): said once
            warnings.warn(f"train.fast is auto: training reads from loader workers: {err}", S4alWarning, stacklevel=2)
        return False
    return True
