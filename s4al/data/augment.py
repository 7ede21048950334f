"""The paper's augmentations (random scale, crop, flip, colour jitter), drawn from a per-sample
seed so that any step of a run can be rebuilt exactly on resume: the draws, and their application to
one sample's image and label-like planes on the loader path (s4al/data/views.py). The device path
(s4al/data/device_augment.py) applies the same draws to whole batches.

Geometry is applied once, jointly to the image and every label-like plane (label, annotated mask,
validity), so labels never drift from their pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

@dataclass(frozen=True)
class Augment:
    scale_range: tuple[float, float] = (0.75, 1.25)
    crop_size: tuple[int, int] | None = None  # None: the original image size
    hflip_p: float = 0.5
    color_jitter_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1


@dataclass(frozen=True)
class Geometry:
    """One sample's geometric draw: resize to `size`, pad right/bottom to the crop, crop at
    (top, left), then flip horizontally or not."""

    size: tuple[int, int]
    top: int
    left: int
    flip: bool


@dataclass(frozen=True)
class Jitter:
    brightness: float
    contrast: float
    saturation: float
    hue: float


def draw_geometry(rng: np.random.Generator, height: int, width: int, aug: Augment) -> Geometry:
    """The geometric draw of an image of height x width: three numbers from `rng`, in this order."""
    scale = rng.uniform(*aug.scale_range)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    ch, cw = aug.crop_size or (height, width)
    top = int(rng.integers(0, max(size[0], ch) - ch + 1))
    left = int(rng.integers(0, max(size[1], cw) - cw + 1))
    return Geometry(size, top, left, bool(rng.random() < aug.hflip_p))


def draw_jitter(rng: np.random.Generator, aug: Augment) -> Jitter | None:
    """The colour draw after the geometric one: None (no jitter) or its four factors."""
    if rng.random() >= aug.color_jitter_p:
        return None
    return Jitter(
        brightness=rng.uniform(1 - aug.brightness, 1 + aug.brightness),
        contrast=rng.uniform(1 - aug.contrast, 1 + aug.contrast),
        saturation=rng.uniform(1 - aug.saturation, 1 + aug.saturation),
        hue=rng.uniform(-aug.hue, aug.hue),
    )


def bilinear_weights(positions: torch.Tensor, sizes: torch.Tensor, source: int, first: int = 0,
                     taps: int | None = None) -> torch.Tensor:
    """(N, crop, taps) weights of an antialiased bilinear resize from `source` to `sizes` pixels (the
    weights of torch's kernel), read at `positions` (N, crop), on the source pixels `first` to
    `first + taps` (default: all); zero rows where a position lies beyond the resized image (padding)."""
    scale = source / sizes.double()  # input / output, as torch's area_pixel_compute_scale
    support = scale.clamp_min(1.0)  # the triangle widens by the scale when shrinking
    reads = (positions.double() + 0.5) * scale[:, None]  # each output pixel's centre in the source
    pixels = torch.arange(first, first + (source - first if taps is None else taps), device=positions.device,
                          dtype=torch.float64) + 0.5  # the source pixels' centres
    weights = (1 - ((pixels - reads[..., None]) / support[:, None, None]).abs()).clamp_min(0)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    inside = positions < sizes[:, None]
    return (weights * inside[..., None]).float()


def nearest_source(positions: torch.Tensor, sizes: torch.Tensor, source: int) -> torch.Tensor:
    """Source pixel of torch's "nearest-exact" resize, the one under each pixel's centre:
    min(floor((i + 0.5) * float32(in / out)), in - 1)."""
    scale = torch.full_like(sizes, source, dtype=torch.float32) / sizes.float()
    return ((positions.float() + 0.5) * scale[:, None]).floor().long().clamp(0, source - 1)


# pixels of an image above which a sample is computed in its crop's window of the source, never
# resized whole (a 10,000-pixel square scaled by 1.25 would take about 1 GB a sample, with its planes)
WINDOWED_AUGMENT_PIXELS = 2048 * 2048


def geometric(
    image: torch.Tensor, planes: torch.Tensor, fills: Sequence[int], rng: np.random.Generator, aug: Augment
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, pad-if-needed, crop and flip a (3,H,W) uint8 image with its (K,H,W) uint8 planes.

    Planes are resized with the nearest neighbour of each pixel's centre (torch's "nearest" takes its
    top-left corner's: half a pixel off the image's bilinear resize, which moves thin classes such as
    poles off their pixels) and padded with their fill value."""
    h, w = image.shape[-2:]
    draw = draw_geometry(rng, h, w, aug)
    if aug.crop_size is not None and h * w > WINDOWED_AUGMENT_PIXELS:
        return _in_window(image, planes, fills, draw, aug.crop_size)
    if draw.size != (h, w):
        image = TF.resize(image, list(draw.size), InterpolationMode.BILINEAR, antialias=True)
        planes = TF.resize(planes, list(draw.size), InterpolationMode.NEAREST_EXACT)
    ch, cw = aug.crop_size or (h, w)
    pad_h, pad_w = max(ch - draw.size[0], 0), max(cw - draw.size[1], 0)
    if pad_h or pad_w:
        image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
        planes = torch.stack([TF.pad(p[None], [0, 0, pad_w, pad_h], fill=f)[0] for p, f in zip(planes, fills)])
    top, left = draw.top, draw.left
    image, planes = image[:, top : top + ch, left : left + cw], planes[:, top : top + ch, left : left + cw]
    if draw.flip:
        image, planes = image.flip(-1), planes.flip(-1)
    return image.contiguous(), planes.contiguous()


def _in_window(image: torch.Tensor, planes: torch.Tensor, fills: Sequence[int], draw: Geometry,
               crop: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """geometric() of a large image computed from the source pixels its crop reads: the planes take the
    same source pixels, the image the resize's weights (within 1 of its uint8 rounding)."""
    (h, w), (ch, cw) = image.shape[-2:], crop
    rows, cols = torch.arange(ch) + draw.top, torch.arange(cw) + draw.left
    (ry, top), (rx, left) = _window_weights(rows, draw.size[0], h), _window_weights(cols, draw.size[1], w)
    window = image[:, top: top + ry.shape[1], left: left + rx.shape[1]].float()
    out = (ry @ window @ rx.T).round_().clamp_(0, 255).to(torch.uint8)
    src_rows = nearest_source(rows[None], torch.tensor([draw.size[0]]), h)[0]
    src_cols = nearest_source(cols[None], torch.tensor([draw.size[1]]), w)[0]
    valid = (rows < draw.size[0])[:, None] & (cols < draw.size[1])[None]
    picked = planes[:, src_rows][:, :, src_cols]
    planes = torch.stack([torch.where(valid, plane, fill) for plane, fill in zip(picked, fills)])
    if draw.flip:
        out, planes = out.flip(-1), planes.flip(-1)
    return out.contiguous(), planes.contiguous()


def _window_weights(positions: torch.Tensor, size: int, source: int) -> tuple[torch.Tensor, int]:
    """bilinear_weights of one axis on the source pixels `positions` read: (weights, the first)."""
    scale = source / size
    reach = max(scale, 1.0) + 1  # the triangle's half-width, and a pixel for rounding
    shown = positions[positions < size].double()
    first = max(0, int(np.floor((float(shown.min()) + 0.5) * scale - reach)))
    last = min(source, int(np.ceil((float(shown.max()) + 0.5) * scale + reach)))
    return bilinear_weights(positions[None], torch.tensor([size]), source, first, last - first)[0], first


def color_jitter(image: torch.Tensor, rng: np.random.Generator, aug: Augment) -> torch.Tensor:
    draw = draw_jitter(rng, aug)
    if draw is None:
        return image
    image = TF.adjust_brightness(image, draw.brightness)
    image = TF.adjust_contrast(image, draw.contrast)
    image = TF.adjust_saturation(image, draw.saturation)
    return TF.adjust_hue(image, draw.hue)
