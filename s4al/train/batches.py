"""Each training step's batches, by name (labelled, unlabelled, replay), from one of two sources:
loader workers that augment each sample on the host (s4al/data/views.py, augment.py), or, on the
fast path, the train split decoded once onto the device and augmented there a batch at a time
(s4al/data/device_cache.py, device_augment.py), with the same per-sample draws
(s4al/train/sampling.py). Both hand the step the same tensors on the training device."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from s4al import distributed
from s4al.config import RunConfig
from s4al.data.augment import Augment
from s4al.data.base import SegmentationDataset, stops_left_to_the_main_process
from s4al.data.batches import to_model_input
from s4al.data.device_augment import LABELLED, UNLABELLED
from s4al.data.device_cache import DeviceCache
from s4al.data.views import Annotations, LabelledView, StepView, UnlabelledView
from s4al.train.graphs import Replayed
from s4al.train.sampling import StepBatches, Stream

IMAGE_KEYS = ("image", "weak", "strong")  # a batch's images; its other tensors are label-like planes
DEVICE_VIEWS = {"labelled": LABELLED, "unlabelled": UNLABELLED, "replay": UNLABELLED}


class StepBatch(NamedTuple):
    """One step's batches on the training device, images as model input: labelled {image, label};
    unlabelled and replay {weak, strong, known_label, known, valid}, or None (cold start; no replay)."""

    labelled: dict[str, torch.Tensor]
    unlabelled: dict[str, torch.Tensor] | None
    replay: dict[str, torch.Tensor] | None


class Streams(NamedTuple):
    labelled: list[int]  # the labelled stream's images
    partial: Annotations  # the labels of those labelled in their answered regions only
    pool: list[int]  # the pool stream's images (SSL)
    pool_answers: Annotations  # their answered regions


def labelled_draws(
    dataset: SegmentationDataset, images: list[int], partial: Annotations, max_copies: int = 64
) -> list[int]:
    """The labelled stream's multiset: a partially labelled image (SSL off) appears in proportion to
    the share of it that is labelled, a whole image as often as the thinnest share asks for, at most
    `max_copies` times. So every labelled pixel is about equally likely to reach the supervised loss:
    drawn uniformly, hundreds of images with a few bought cells each crowd the whole images out of
    the batches (CamVid `cpu`, region entropy without SSL: mIoU 28 -> 17 after one cycle).
    Without partially labelled images (every SSL run): every image once."""
    shares = {
        i: sum(patch.size for _, patch in partial[i]) / np.prod(dataset.image_size(i)) for i in images if i in partial
    }
    copies = min(max_copies, round(1 / min(shares.values()))) if shares else 1
    return [i for i in images for _ in range(max(1, round(copies * shares.get(i, 1.0))))]


class BatchSource:
    """The batches of one cycle's training, from any step on. `on_device`: the fast path (a
    DeviceCache); `graphs`: its batches built by CUDA graphs. The pool stream starts at
    `cold_steps` (none without `streams.pool`)."""

    def __init__(self, cfg: RunConfig, dataset: SegmentationDataset, streams: Streams, cycle: int,
                 total_steps: int, cold_steps: int, device: torch.device, aug: Augment, on_device: bool,
                 graphs: bool):
        self.cfg, self.dataset, self.streams, self.cycle = cfg, dataset, streams, cycle
        self.total_steps, self.cold_steps = total_steps, cold_steps
        self.device, self.aug, self.on_device, self.graphs = device, aug, on_device, graphs
        self.views: dict[str, Replayed] = {}  # the fast path's batch builders, made with its device cache

    def replay_on(self, step: int) -> bool:
        """Whether `step` draws a replay batch (Balanced ClassMix): from balanced_from_cycle on, once
        the cold start and balanced_from_epoch are over."""
        s = self.cfg.ssl
        epoch = step // self.cfg.train.iters_per_epoch
        return (bool(self.streams.pool) and s.replay and self.cycle >= s.balanced_from_cycle
                and epoch >= max(s.balanced_from_epoch, s.cold_start_epochs))

    def samplers(self, start: int) -> tuple[StepBatches, StepBatches | None]:
        """The labelled stream's and, with a pool, the pool stream's named draws from step `start` on."""
        cfg, seed = self.cfg, self.cfg.seed
        shard = {"rank": distributed.rank(), "world_size": distributed.world_size()}
        draws = labelled_draws(self.dataset, self.streams.labelled, self.streams.partial)
        labelled = StepBatches(
            Stream(draws, seed, "labelled", self.cycle), cfg.train.batch_size, start, self.total_steps,
            name="labelled", **shard,
        )
        if not self.streams.pool:
            return labelled, None
        unlabelled = StepBatches(
            Stream(self.streams.pool, seed, "pool", self.cycle),
            cfg.train.unlabelled_batch_size,
            max(start, self.cold_steps),
            self.total_steps,
            name="unlabelled",
            first_step=self.cold_steps,
            replay_size=cfg.ssl.replay_size if cfg.ssl.replay else 0,
            replay_on=self.replay_on,
            **shard,
        )
        return labelled, unlabelled

    def loaders(self, start: int) -> tuple[Iterator[dict], Iterator[dict] | None]:
        """Named batches of the loader path from step `start` on: host tensors, augmented per
        sample by loader workers."""
        workers, pin = self.cfg.train.num_workers, self.device.type == "cuda"
        labelled, unlabelled = self.samplers(start)
        loader = partial(DataLoader, batch_size=None, num_workers=workers, pin_memory=pin,
                         worker_init_fn=stops_left_to_the_main_process())
        labelled_view = StepView(LabelledView(self.dataset, self.aug, self.streams.partial))
        labelled_batches = iter(loader(labelled_view, sampler=labelled))
        if unlabelled is None:
            return labelled_batches, None
        unlabelled_view = StepView(UnlabelledView(self.dataset, self.aug, self.streams.pool_answers))
        return labelled_batches, iter(loader(unlabelled_view, sampler=unlabelled))

    def to_device(self, named: dict[str, dict]) -> dict[str, dict]:
        """Loader batches -> model input: images float in [0, 1], everything on the device."""
        return {
            name: {k: to_model_input(v, self.device) if k in IMAGE_KEYS else v.to(self.device, non_blocking=True)
                   for k, v in batch.items()}
            for name, batch in named.items()
        }

    def _built_on_device(self, start: int) -> tuple[Iterator[dict], Iterator[dict] | None]:
        """Named batches of the fast path from step `start` on, built on the device from the cached split."""
        streams = self.streams
        cache = DeviceCache(
            self.dataset, streams.labelled, streams.pool, self.device, partial=streams.partial,
            annotations=streams.pool_answers, num_workers=self.cfg.train.num_workers,
        )
        self.views = {name: Replayed(partial(kind.views, cache, self.aug), self.graphs, f"{name} batch")
                      for name, kind in DEVICE_VIEWS.items()}

        def build(name: str, items: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
            inputs = DEVICE_VIEWS[name].inputs(cache, items, self.aug)
            # a graph reads the cache's images where and as many as they were at its capture
            return self.views[name](*inputs, key=(cache.images.data_ptr(), len(cache.images)))

        def built(sampler: StepBatches) -> Iterator[dict]:
            for draw in sampler:
                yield {name: build(name, items) for name, items in draw.items()}

        labelled, unlabelled = self.samplers(start)
        return built(labelled), None if unlabelled is None else built(unlabelled)

    def batches(self, start: int) -> Iterator[StepBatch]:
        """Each step's batches from `start` to the cycle's end. With CUDA graphs a step's batches
        are overwritten when the next step's are built."""
        if start >= self.total_steps:  # resumed from the final checkpoint: no workers, no cache
            return
        if self.on_device:
            labelled, unlabelled = self._built_on_device(start)
        else:
            labelled, unlabelled = (None if it is None else map(self.to_device, it) for it in self.loaders(start))
        for step in range(start, self.total_steps):
            named = next(labelled)
            if unlabelled is not None and step >= self.cold_steps:
                named = named | next(unlabelled)
            yield StepBatch(named["labelled"], named.get("unlabelled"), named.get("replay"))
