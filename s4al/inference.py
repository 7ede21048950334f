"""Where inference (pool scoring, evaluation) reads its images: on the fast path (train.fast on, or
auto on a CUDA device) from a whole split decoded once per process onto the device
(s4al/data/device_cache.py), in large batches under bf16 autocast on CUDA; otherwise, and for a
split of mixed sizes, of images too large to run whole (s4al/tiles.py) or too large for the
device's free memory, from loader workers."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from itertools import chain

import torch

from s4al.config import FastMode
from s4al.data.base import SegmentationDataset
from s4al.data.batches import image_batches
from s4al.data.device_cache import DeviceCache, DeviceMemoryShort, MixedImageSizes, common_size, fast_path_asked
from s4al.tiles import TILE_SIDE, runs_whole

_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # dataset -> (device, labels, cache)


def inference_cache(
    dataset: SegmentationDataset, device: torch.device, fast: FastMode, labels: bool, num_workers: int = 0
) -> DeviceCache | None:
    """The whole split on `device` for pool scoring and evaluation when the fast path is on (`fast`
    on, or auto on a CUDA device), its images share one size that runs whole (s4al/tiles.py) and
    it fits (device_cache.check_fits); None: loader workers read it. Decoded once per process while
    `dataset` lives (its images shared with training's cache), with its labels when `labels`;
    without them a split's labels are never loaded."""
    if not fast_path_asked(fast, device):
        return None
    known = _CACHES.get(dataset)
    if known is not None and known[0] == device and (known[1] or not labels):
        return known[2]
    cache = _whole_split(dataset, device, labels, num_workers)
    _CACHES[dataset] = device, labels, cache
    return cache


def _whole_split(
    dataset: SegmentationDataset, device: torch.device, labels: bool, num_workers: int
) -> DeviceCache | None:
    everything = list(range(len(dataset)))
    if not everything:
        return None
    try:
        size = common_size(dataset, everything)
    except MixedImageSizes:
        return None
    if not runs_whole(*size):
        return None
    try:
        return DeviceCache(dataset, everything if labels else [], [] if labels else everything, device,
                           num_workers=num_workers)
    except DeviceMemoryShort:
        return None


def bf16_inference(cache: DeviceCache | None):
    """Autocast for a forward pass on the cached images: bf16 on CUDA (the caller turns the logits
    to fp32 before softmax and scores); off on a CPU and on the loader path (fp32, as before)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cache is not None and cache.device.type == "cuda")


def inference_batches(
    dataset: SegmentationDataset, indices: Sequence[int], batch_size: int, device: torch.device, num_workers: int,
    cache: DeviceCache | None, labels: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[int]]]:
    """This rank's (uint8 (N, 3, H, W) images, uint8 (N, H, W) labels or None, dataset indices)
    batches of `indices`: from the device cache, else read by loader workers in same-size batches,
    an image too large to run whole alone (it is then run tile by tile, s4al/tiles.py)."""
    if cache is not None:
        return cached_batches(cache, indices, batch_size, labels)
    fits = [runs_whole(*dataset.image_size(i)) for i in indices]
    whole = [i for i, fit in zip(indices, fits) if fit]
    large = [i for i, fit in zip(indices, fits) if not fit]
    return chain(*(image_batches(dataset, size, num_workers, group, shard=True, labels=labels,
                                 pin_memory=device.type == "cuda")
                   for group, size in ((whole, batch_size), (large, 1)) if group))


def cached_batches(
    cache: DeviceCache, indices: Sequence[int], batch_size: int, labels: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[int]]]:
    """The cache's batches of `indices`. On CUDA a batch holds at least TILE_SIDE x TILE_SIDE pixels,
    the most one forward pass may hold anywhere (s4al/tiles.py): few large batches keep a GPU busy.
    On a CPU `batch_size` images (larger batches add memory there, not speed)."""
    h, w = cache.size
    if cache.device.type == "cuda":
        batch_size = max(batch_size, TILE_SIDE**2 // (h * w))
    return cache.batches(indices, batch_size, labels)
