"""Scoring the pool and choosing what to ask for. One streaming pass over the pool: per batch the
class probabilities become pixel scores, then cell scores, and only the cell scores (a few hundred
floats per image) are kept, so memory does not grow with the pool's probability maps. An image too
large to run whole is scored tile by tile (s4al/tiles.py), so memory does not grow with one image's
size either (beyond its decoded pixels, 3 bytes each).

On the fast path (train.fast, s4al/inference.py) the pool is read from the train split
decoded once onto the device, in large batches under bf16 autocast on CUDA, and the scores stay on
the device until one copy at the end, so the host never waits for a GPU between batches.

Under torch.distributed each rank scores its share of the batches and every rank receives all the
scores, so the selection (made identically everywhere) equals a single process's. Random scores
are drawn per image from (seed, image index), so they too do not depend on the sharding."""

from __future__ import annotations

import ctypes
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from s4al import distributed
from s4al.acquisition.coreset import k_center_greedy, pooled_features
from s4al.acquisition.regions import (
    box_masks, boxes_within, cell_box, cell_scores, grid_shape, select_global, select_per_image,
)
from s4al.acquisition.scores import CORESET, RANDOM, pixel_scores, random_scores
from s4al.config import ActiveConfig, FastMode
from s4al.data.base import Box, SegmentationDataset
from s4al.data.batches import to_model_input
from s4al.data.device_cache import DeviceCache
from s4al.errors import S4alError, S4alWarning
from s4al.inference import bf16_inference, inference_batches, inference_cache
from s4al.tiles import tiles, tile_logits
from s4al.seeding import seeded_generator
from s4al.text import first_of


def _find_malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent on macOS and musl, no CDLL(None) on Windows
    except (AttributeError, OSError, TypeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()
TRIM_EVERY = 32  # batches


@dataclass(frozen=True)
class Query:
    index: int  # dataset index
    box: Box  # (y0, x0, y1, x1); the whole image for image-level queries
    score: float


def scoring_workers(device: torch.device, configured: int) -> int:
    """Loader processes for pool scoring: on a CPU they compete with the network for the same cores
    (measured on 2 cores: 0.52x plain-inference throughput with 2 workers, 0.87x with none)."""
    return configured if device.type == "cuda" else 0


def _on_host(batches: Iterator[tuple[list[int], torch.Tensor]]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """The (dataset indices, values) batches with the values copied to the host, one batch late:
    each copy is queued asynchronously and waited for only after the next batch's work is queued,
    so a GPU never idles while the host waits for it between batches."""
    pending = None
    for indices, values in batches:
        done = torch.cuda.Event() if values.is_cuda else None
        copied = values.to("cpu", non_blocking=True)
        if done is not None:
            done.record()
        if pending is not None:
            yield _completed(*pending)
        pending = indices, copied, done
    if pending is not None:
        yield _completed(*pending)


def _completed(indices: list[int], copied: torch.Tensor, done) -> tuple[list[int], torch.Tensor]:
    if done is not None:  # a torch.cuda.Event recorded after the copy
        done.synchronize()
    return indices, copied


def _on_host_at_end(batches: Iterator[tuple[list[int], torch.Tensor]]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """The (dataset indices, values) batches as one, copied to the host after the last: the host
    queues every batch's work without waiting for the device in between."""
    indices, values = [], []
    for batch_indices, batch_values in batches:
        indices += batch_indices
        values.append(batch_values)
    if values:
        yield indices, torch.cat(values).cpu()


def _to_host(batches, cache: DeviceCache | None):
    """Loader batches (of any image size, tiled ones too) are copied as they come, so the device never
    holds a whole pool's scores; batches from the device cache (images that run whole) at the end."""
    return _on_host(batches) if cache is None else _on_host_at_end(batches)


def _gathered(shard: dict) -> dict:
    return {k: v for part in distributed.gather_objects(shard) for k, v in part.items()}


def _release_freed_memory() -> None:
    """glibc keeps freed full-resolution activations in its heap, fragmented, so the resident memory
    of a pool scan grew with the pool though nothing is kept (CPU, 100 / 2,000 images: +483 / +844
    MiB); malloc_trim hands the free pages back to the system. After every batch it halved the
    throughput (the next batch faults the pages in again), hence only every TRIM_EVERY batches."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _image_batches(dataset, indices, batch_size, device, num_workers, cache: DeviceCache | None):
    """This rank's (uint8 (N, 3, H, W) images, dataset indices) batches of `indices`."""
    batches = inference_batches(dataset, indices, batch_size, device, num_workers, cache, labels=False)
    return ((images, batch_indices) for images, _, batch_indices in batches)


@torch.no_grad()
def _pixel_score_batches(model, dataset, indices, metric, options, batch_size, device, seed, unit, num_workers, cache,
                         scored: Callable[[int], None] | None = None):
    """Yields (dataset indices, (H, W), pieces) over this rank's share of the pool. `pieces` yields
    ((N, h, w) pixel scores on `device`, core box) per tile: one piece, the whole image, unless the
    images are too large to run whole (s4al/tiles.py; cores aligned to `unit`). Consume the pieces
    before the next batch. `scored`: called with the number of images of each batch consumed."""
    model.eval()
    batches = _image_batches(dataset, indices, batch_size, device, num_workers, cache)
    for number, (images, batch_indices) in enumerate(batches, start=1):
        size = tuple(images.shape[-2:])
        pieces = _tile_scores(model, images, batch_indices, metric, options, device, seed, unit, cache)
        yield batch_indices, size, pieces
        if scored is not None:
            scored(len(batch_indices))
        if number % TRIM_EVERY == 0:
            _release_freed_memory()


@torch.no_grad()  # run lazily, by the consumer of the pieces
def _tile_scores(model, images, batch_indices, metric, options, device, seed, unit, cache):
    generators = [seeded_generator(seed, i) for i in batch_indices]
    image_tiles = tiles(*images.shape[-2:], unit)
    for tile in image_tiles:
        if metric == RANDOM:  # no network needed; one draw per cell (cores are aligned to the cells)
            y0, x0, y1, x1 = tile.core
            scores = torch.stack([random_scores((y1 - y0, x1 - x0), unit, g) for g in generators]).to(device)
        else:
            with bf16_inference(cache):
                logits = tile_logits(model, images, tile, device)
            scores = pixel_scores(metric, logits.float().softmax(1), options)
        yield scores, tile.core
        if len(image_tiles) > 1:  # windows of several sizes fragment the heap (+50 MiB on 12 tiles)
            _release_freed_memory()


def score_cells(
    model: nn.Module,
    dataset: SegmentationDataset,
    indices: Sequence[int],
    asked: Mapping[int, Sequence[Box]],
    cfg: ActiveConfig,
    device: torch.device,
    seed: int,
    num_workers: int = 0,
    *,
    fast: FastMode,
    scored: Callable[[int], None] | None = None,
) -> dict[int, np.ndarray]:
    """Per pool image, the (rows, cols) mean score of each cell over its pixels never asked (an
    answered, skipped or waiting region is not asked again; a cell of none scores -inf).
    `fast`: train.fast, whether the pool is read from the device (s4al/inference.py); `scored`:
    called with the number of images of each batch this process scored."""
    s = cfg.region_size

    def cells_of(ids: list[int], size: tuple[int, int], pieces) -> torch.Tensor:
        grid = torch.empty(len(ids), *grid_shape(*size, s), device=device)
        for scores, core in pieces:  # cores are aligned to the cells
            asked_mask = box_masks([boxes_within(asked.get(i, ()), core) for i in ids], *scores.shape[-2:], device)
            cells = cell_scores(scores, asked_mask, s)
            row, col = core[0] // s, core[1] // s
            grid[:, row : row + cells.shape[1], col : col + cells.shape[2]] = cells
        return grid

    cells: dict[int, np.ndarray] = {}
    cache = inference_cache(dataset, device, fast, labels=False, num_workers=num_workers)
    batches = _pixel_score_batches(model, dataset, indices, cfg.metric, cfg.metric_options, cfg.score_batch_size,
                                   device, seed, s, num_workers, cache, scored)
    batch_cells = ((ids, cells_of(ids, size, pieces)) for ids, size, pieces in batches)
    for batch_indices, values in _to_host(batch_cells, cache):
        cells.update(zip(batch_indices, values.numpy()))
    return _gathered(cells)


class CappedConfigWarning(S4alWarning):
    """A config value that some images are too small for, so it is capped to them."""


def warn_capped(sizes: Mapping[int, tuple[int, int]], cfg: ActiveConfig) -> None:
    """Says when cells are cut to a smaller image, or an image has fewer cells than it would be asked for."""
    s = cfg.region_size
    narrow = [size for size in sizes.values() if min(size) < s]
    if narrow:
        h, w = narrow[0]
        warnings.warn(f"active.region_size {s} is larger than a side of {len(narrow)} pool image(s), e.g. {h}x{w}: "
                      "their cells are cut to the image", CappedConfigWarning, stacklevel=2)
    k = cfg.regions_per_image
    grids = [(size, grid_shape(*size, s)) for size in sizes.values()] if cfg.selection == "per_image" else []
    few = [(size, (rows, cols)) for size, (rows, cols) in grids if rows * cols < k]
    if few:
        (h, w), (rows, cols) = few[0]
        warnings.warn(f"active.regions_per_image {k} is more than the cells of {len(few)} pool image(s), e.g. "
                      f"{h}x{w} has {rows}x{cols} = {rows * cols} cells of {s}x{s}: every cell of those is asked for",
                      CappedConfigWarning, stacklevel=2)


def choose_regions(cells: Mapping[int, np.ndarray], sizes: Mapping[int, tuple[int, int]], cfg: ActiveConfig) -> list[Query]:
    s = cfg.region_size
    if cfg.selection == "per_image":
        picks = [(i, r, c, v) for i in sorted(cells) for r, c, v in select_per_image(cells[i], cfg.regions_per_image)]
    else:
        picks = select_global(cells, cfg.global_budget)
    return [Query(i, cell_box(r, c, *sizes[i], s), float(v)) for i, r, c, v in picks]


@torch.no_grad()
def score_images(
    model, dataset, indices, metric, batch_size, device, seed, num_workers=0, *, fast: FastMode,
    options: Mapping[str, object] | None = None, scored: Callable[[int], None] | None = None,
) -> dict[int, float]:
    """Mean pixel score per pool image (the image-level random / entropy / ... baselines); `options`:
    the metric's (active.metric_options); `scored` as for score_cells."""
    def means(size: tuple[int, int], pieces) -> torch.Tensor:  # tiles weighted by their area; one tile: its mean
        return sum(scores.mean(dim=(1, 2)) * (scores[0].numel() / (size[0] * size[1])) for scores, _ in pieces)

    out: dict[int, float] = {}
    cache = inference_cache(dataset, device, fast, labels=False, num_workers=num_workers)
    batches = _pixel_score_batches(model, dataset, indices, metric, options, batch_size, device, seed, 1, num_workers,
                                   cache, scored)
    for batch_indices, values in _to_host(((ids, means(size, pieces)) for ids, size, pieces in batches), cache):
        out.update(zip(batch_indices, values.tolist()))
    return _gathered(out)


@torch.no_grad()
def image_features(
    model, dataset, indices, batch_size, device, num_workers=0, *, fast: FastMode
) -> torch.Tensor:
    """(len(indices), C) pooled deepest encoder features, in the order of `indices`; an image too
    large to run whole gets the mean of its tiles' pooled features, weighted by their cores' areas."""
    cache = inference_cache(dataset, device, fast, labels=False, num_workers=num_workers)

    def pooled(images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        parts = []
        for tile in tiles(h, w, 1):
            y0, x0, y1, x1 = tile.window
            weight = (tile.core[2] - tile.core[0]) * (tile.core[3] - tile.core[1]) / (h * w)
            with bf16_inference(cache):
                encoded = model.features(to_model_input(images[..., y0:y1, x0:x1], device))
            parts.append(pooled_features(encoded.float()) * weight)
        return sum(parts)

    model.eval()
    features: dict[int, np.ndarray] = {}
    batches = _image_batches(dataset, indices, batch_size, device, num_workers, cache)
    for batch_indices, values in _to_host(((ids, pooled(images)) for images, ids in batches), cache):
        # arrays: a tensor's row would be sent to the other ranks with every row of its batch
        features.update(zip(batch_indices, values.numpy()))
    features = _gathered(features)
    return torch.from_numpy(np.stack([features[i] for i in indices]))


def images_per_cycle(initial_pool_sizes: Sequence[tuple[int, int]], cfg: ActiveConfig) -> int:
    """Whole images matching the pixel budget of the region-level protocol, which buys the same
    cells every cycle: k per image of the initial pool (it never shrinks), or the global budget.
    The current pool would shrink the budget as whole images leave it."""
    if not initial_pool_sizes:
        return 0
    cells = cfg.regions_per_image * len(initial_pool_sizes) if cfg.selection == "per_image" else cfg.global_budget
    mean_pixels = np.mean([h * w for h, w in initial_pool_sizes])
    return max(1, round(cells * cfg.region_size**2 / mean_pixels))


def choose_images(
    model, dataset, labelled: Sequence[int], pool: Sequence[int], count: int, cfg: ActiveConfig, device, seed: int,
    num_workers: int = 0, *, fast: FastMode, scored: Callable[[int], None] | None = None,
) -> list[Query]:
    """`count` whole pool images by the image-level metric (Core-Set: k-center greedy); `scored` as
    for score_cells (not called for Core-Set and random, which score no pixel)."""
    def whole(i: int, score: float) -> Query:
        h, w = dataset.image_size(i)
        return Query(i, (0, 0, h, w), score)

    if cfg.metric == CORESET:
        order = list(labelled) + list(pool)
        feats = image_features(model, dataset, order, cfg.score_batch_size, device, num_workers, fast=fast)
        is_labelled = torch.arange(len(order)) < len(labelled)
        return [whole(order[k], 0.0) for k in k_center_greedy(feats, is_labelled, count)]
    if cfg.metric == RANDOM:  # one draw per image, whatever its size
        scores = {i: random_scores((1, 1), 1, seeded_generator(seed, i)).item() for i in pool}
    else:
        scores = score_images(model, dataset, pool, cfg.metric, cfg.score_batch_size, device, seed, num_workers,
                              fast=fast, options=cfg.metric_options, scored=scored)
    unscored = [dataset.image_id(i) for i in pool if math.isnan(scores[i])]
    if unscored:
        raise S4alError(f"image scores contain NaN ({first_of(unscored)}): the model's probabilities or the "
                        "acquisition metric (active.metric) gave a pixel NaN; nothing was asked, and a resume scores "
                        "the pool again")
    ranked = sorted(pool, key=lambda i: (-scores[i], i))[:count]
    return [whole(i, scores[i]) for i in ranked]
