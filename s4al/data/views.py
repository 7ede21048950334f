"""Training views of dataset samples: the paper's augmentations (random scale, crop, flip, colour
jitter), drawn from a per-sample seed so that any step of a run can be rebuilt exactly on resume.

Geometry is applied once, jointly to the image and every label-like plane (label, annotated mask,
validity), so labels never drift from their pixels. The unlabelled view returns the weak view for
the teacher and, from the same geometry, the strong (colour-jittered) view for the student; ClassMix
is done later on the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode

from s4al.data.base import Box, SegmentationDataset
from s4al.data.classes import IGNORE_INDEX

Annotations = Mapping[int, Sequence[tuple[Box, np.ndarray]]]  # dataset index -> answered patches


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
