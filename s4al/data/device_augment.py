"""The views of s4al/data/views.py built for a whole batch at once on the training device, from a
DeviceCache: the same per-sample draws (augment.draw_geometry, augment.draw_jitter, from the same
seeds in the same order), applied as batched tensor operations.

Geometry (resize, pad, crop, flip) is separable, so each sample's image is resampled as
Ry @ image @ Rx^T with per-axis matrices holding the weights of an antialiased bilinear resize
(the weights of torch's bilinear antialias kernel, which the loader path's resize runs), its zero
rows where the crop is padding, and the flip as reversed rows of Rx. Label-like planes take the
source pixel under each pixel's centre, as torch's "nearest-exact" resize (floor((i + 0.5) * in /
out) in float32), and their fill value on padding. So a sample lands on the same source pixels as
on the loader path; images differ from it only by the loader's uint8 rounding between operations.

Images come out as float32 in [0, 1], channels_last (model input); planes as uint8 / bool."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from s4al.data.batches import host_to_device
from s4al.data.classes import IGNORE_INDEX
from s4al.data.device_cache import DeviceCache
from s4al.data.augment import Augment, bilinear_weights, draw_geometry, draw_jitter, nearest_source

# columns of a batch's parameter table
SIZE_H, SIZE_W, TOP, LEFT, FLIP, JITTERED, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(10)
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def draw_params(seeds: Sequence[int], height: int, width: int, aug: Augment) -> np.ndarray:
    """(N, 10) float64 per-sample draws, each from np.random.default_rng(seed) as the views draw."""
    table = np.zeros((len(seeds), 10))
    for row, seed in zip(table, seeds):
        rng = np.random.default_rng(seed)
        geometry = draw_geometry(rng, height, width, aug)
        row[[SIZE_H, SIZE_W, TOP, LEFT, FLIP]] = (*geometry.size, geometry.top, geometry.left, geometry.flip)
        jitter = draw_jitter(rng, aug)
        if jitter is not None:
            row[JITTERED:] = (1, jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    return table


def _source_positions(params: torch.Tensor, crop: int, offset_col: int, flip: bool) -> torch.Tensor:
    """(N, crop) positions in the resized image that each output row/column shows (flip: reversed)."""
    steps = torch.arange(crop, device=params.device)
    if flip:
        steps = torch.where(params[:, FLIP, None] > 0, crop - 1 - steps, steps)
    return params[:, offset_col, None].long() + steps


def resample(
    images: torch.Tensor, planes: torch.Tensor, fills: Sequence[int], params: torch.Tensor, crop: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """images (N, 3, H, W) uint8, planes (N, K, H, W) uint8, params (N, 10) on the device ->
    (images (N, 3, ch, cw) float32 in [0, 1], planes (N, K, ch, cw) uint8, valid (N, ch, cw) bool)."""
    (h, w), (ch, cw) = images.shape[-2:], crop
    sizes_h, sizes_w = params[:, SIZE_H].long(), params[:, SIZE_W].long()
    rows = _source_positions(params, ch, TOP, flip=False)
    cols = _source_positions(params, cw, LEFT, flip=True)
    ry, rx = bilinear_weights(rows, sizes_h, h), bilinear_weights(cols, sizes_w, w)
    out = ry[:, None] @ images.float() @ rx[:, None].transpose(-1, -2)
    out = out.div_(255).clamp_(0, 1).contiguous(memory_format=torch.channels_last)

    valid = (rows < sizes_h[:, None])[:, :, None] & (cols < sizes_w[:, None])[:, None, :]
    n, k = planes.shape[:2]
    src_rows, src_cols = nearest_source(rows, sizes_h, h), nearest_source(cols, sizes_w, w)
    picked = planes.gather(2, src_rows[:, None, :, None].expand(n, k, ch, w))
    picked = picked.gather(3, src_cols[:, None, None, :].expand(n, k, ch, cw))
    # a Python fill per plane: torch.tensor(fills, device=...) would be a copy that waits for a GPU
    filled = torch.stack([torch.where(valid, picked[:, j], fill) for j, fill in enumerate(fills)], 1)
    return out, filled, valid


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (image * ratio + other * (1 - ratio)).clamp_(0, 1)


def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, hue + shift (mod 1), -> RGB, as torchvision's adjust_hue on float images."""
    r, g, b = images.unbind(1)
    value, _ = images.max(1)
    chroma = value - images.min(1).values
    saturation = chroma / torch.where(value > 0, value, 1)
    safe = torch.where(chroma > 0, chroma, 1)
    hue = torch.where(
        value == r, (g - b) / safe, torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = torch.where(chroma > 0, hue / 6, 0).add(1).fmod(1)
    hue = (hue + shift.view(-1, 1, 1)).remainder(1)
    # hsv -> rgb: channel n of (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    offsets = torch.arange(5.0, 0.0, -2.0, device=images.device).view(1, 3, 1, 1)  # 5, 3, 1
    k = (offsets + 6 * hue[:, None]).remainder(6)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return (value[:, None] * (1 - saturation[:, None] * ramp)).clamp(0, 1)


def color_jitter(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (torchvision's formulas on float images) with each
    sample's own factors; samples not drawn for jitter pass unchanged."""
    factor = params[:, BRIGHTNESS:].float().view(-1, 4, 1, 1, 1).unbind(1)
    out = (images * factor[0]).clamp(0, 1)
    out = _blend(out, _gray(out).mean(dim=(1, 2, 3), keepdim=True), factor[1])
    out = _blend(out, _gray(out), factor[2])
    out = _shift_hue(out, params[:, HUE].float())
    return torch.where(params[:, JITTERED].view(-1, 1, 1, 1) > 0, out, images).contiguous(
        memory_format=torch.channels_last
    )


def _params(cache: DeviceCache, items: Sequence[tuple[int, int]], aug: Augment) -> torch.Tensor:
    return host_to_device(torch.from_numpy(draw_params([seed for _, seed in items], *cache.size, aug)), cache.device)


def _on_device(cache: DeviceCache, rows: np.ndarray) -> torch.Tensor:
    return host_to_device(torch.from_numpy(rows), cache.device)


def labelled_inputs(cache: DeviceCache, items: Sequence[tuple[int, int]], aug: Augment) -> tuple[torch.Tensor, ...]:
    """The host's part of a labelled batch of (index, seed): (params, image rows, label rows) on the device."""
    indices = [i for i, _ in items]
    return _params(cache, items, aug), _on_device(cache, cache.rows(indices)), _on_device(cache, cache.label_rows(indices))


def labelled_views(cache: DeviceCache, aug: Augment, params: torch.Tensor, rows: torch.Tensor,
                   label_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The device's part, LabelledView's items: image (jittered), label. Waits for nothing on the
    host, and its shapes follow its inputs' (s4al/train/graphs.py replays it)."""
    crop = aug.crop_size or cache.size
    image, planes, _ = resample(cache.images[rows], cache.labels[label_rows][:, None], [IGNORE_INDEX], params, crop)
    return {"image": color_jitter(image, params), "label": planes[:, 0]}


def unlabelled_inputs(cache: DeviceCache, items: Sequence[tuple[int, int]], aug: Augment) -> tuple[torch.Tensor, ...]:
    """The host's part of an unlabelled batch of (index, seed): (params, image rows, answer slots) on the device."""
    indices = [i for i, _ in items]
    return _params(cache, items, aug), _on_device(cache, cache.rows(indices)), _on_device(cache, cache.slots(indices))


def unlabelled_views(cache: DeviceCache, aug: Augment, params: torch.Tensor, rows: torch.Tensor,
                     slots: torch.Tensor) -> dict[str, torch.Tensor]:
    """The device's part, UnlabelledView's items: weak, strong, known_label, known, valid (as
    labelled_views, replayable)."""
    planes = torch.stack([cache.known_label[slots], cache.known[slots].to(torch.uint8)], 1)
    weak, planes, valid = resample(cache.images[rows], planes, [IGNORE_INDEX, 0], params, aug.crop_size or cache.size)
    return {"weak": weak, "strong": color_jitter(weak, params), "known_label": planes[:, 0],
            "known": planes[:, 1].bool(), "valid": valid}


class DeviceViews(NamedTuple):
    inputs: Callable  # (cache, items, aug) -> input tensors, made on the host
    views: Callable  # (cache, aug, *inputs) -> the batch, on the device alone

    def build(self, cache: DeviceCache, items: Sequence[tuple[int, int]], aug: Augment) -> dict[str, torch.Tensor]:
        """The batch of (index, seed) items, both parts eagerly."""
        return self.views(cache, aug, *self.inputs(cache, items, aug))


LABELLED = DeviceViews(labelled_inputs, labelled_views)
UNLABELLED = DeviceViews(unlabelled_inputs, unlabelled_views)
