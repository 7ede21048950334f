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


def geometric(
    image: torch.Tensor, planes: torch.Tensor, fills: Sequence[int], rng: np.random.Generator, aug: Augment
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, pad-if-needed, crop and flip a (3,H,W) uint8 image with its (K,H,W) uint8 planes.

    Planes are resized with nearest neighbour and padded with their fill value."""
    h, w = image.shape[-2:]
    draw = draw_geometry(rng, h, w, aug)
    if draw.size != (h, w):
        image = TF.resize(image, list(draw.size), InterpolationMode.BILINEAR, antialias=True)
        planes = TF.resize(planes, list(draw.size), InterpolationMode.NEAREST)
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


def color_jitter(image: torch.Tensor, rng: np.random.Generator, aug: Augment) -> torch.Tensor:
    draw = draw_jitter(rng, aug)
    if draw is None:
        return image
    image = TF.adjust_brightness(image, draw.brightness)
    image = TF.adjust_contrast(image, draw.contrast)
    image = TF.adjust_saturation(image, draw.saturation)
    return TF.adjust_hue(image, draw.hue)
