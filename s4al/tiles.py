"""Inference in bounded memory: an image of more than TILE_SIDE x TILE_SIDE pixels is run through the
network one tile at a time, so the activations, logits and probabilities held at once never exceed
those of a TILE_SIDE x TILE_SIDE image, whatever the image's size (at full resolution an 8000x8000
image needs tens of GiB). Smaller images run whole, exactly as without tiling.

A tile's core (the pixels whose predictions are kept) is aligned to a unit, the cell size when
scoring the pool, so every cell lies in one core and its score is computed as in a whole image. The
network sees the core with CONTEXT pixels of the image around it (where the image has them), its
corner on the model's stride grid, so pixels near a core's edge keep their nearest surroundings.
Tiling does change a large image's predictions a little: the network's image-level pooling
(DeepLabv3+'s ASPP image branch) averages over the tile instead of the whole image, and no pixel
sees more than CONTEXT pixels beyond its core, where the widest ASPP branch (rate 36 at stride 16)
reaches 576: predictions near a core's edge can differ from the whole image's. Downscaling a large
image instead would predict at a scale the network was never trained at (training crops keep the
original resolution).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from s4al.data.base import Box
from s4al.data.batches import to_model_input
from s4al.model import STRIDE


TILE_SIDE = 2048  # 4.2 Mpixels: 1080p, 2560x1440 and Cityscapes' 1024x2048 run whole
CONTEXT = 128  # pixels of image around a core; a multiple of STRIDE


@dataclass(frozen=True)
class Tile:
    core: Box  # the predictions kept
    window: Box  # what the network sees: the core, its context, the corner on the stride grid

    def core_in_window(self) -> tuple[slice, slice]:
        (y0, x0, y1, x1), (wy, wx) = self.core, self.window[:2]
        return slice(y0 - wy, y1 - wy), slice(x0 - wx, x1 - wx)


def runs_whole(height: int, width: int) -> bool:
    return height * width <= TILE_SIDE**2


def core_side(unit: int) -> int:
    """The cores' side: the largest multiple of `unit` whose window (with context on both sides and
    up to STRIDE - 1 pixels of alignment) stays within TILE_SIDE; one unit if none does."""
    return max(unit, (TILE_SIDE - 2 * CONTEXT - STRIDE) // unit * unit)


def tiles(height: int, width: int, unit: int) -> list[Tile]:
    """The whole image as one tile when it runs whole, else square cores of `core_side(unit)` laid
    row by row from the top-left corner (the last row and column smaller), each with its window."""
    if runs_whole(height, width):
        return [Tile((0, 0, height, width), (0, 0, height, width))]
    side = core_side(unit)
    out = []
    for y0 in range(0, height, side):
        for x0 in range(0, width, side):
            y1, x1 = min(y0 + side, height), min(x0 + side, width)
            window = (
                max(0, y0 - CONTEXT) // STRIDE * STRIDE,
                max(0, x0 - CONTEXT) // STRIDE * STRIDE,
                min(height, y1 + CONTEXT),
                min(width, x1 + CONTEXT),
            )
            out.append(Tile((y0, x0, y1, x1), window))
    return out


def tile_logits(model: nn.Module, images: Tensor, tile: Tile, device: torch.device) -> Tensor:
    """(N, C, core height, core width) logits of a tile's core, from uint8 (N, 3, H, W) images;
    only the window is converted to the model's input."""
    wy0, wx0, wy1, wx1 = tile.window
    logits = model(to_model_input(images[..., wy0:wy1, wx0:wx1], device))
    rows, cols = tile.core_in_window()
    return logits[..., rows, cols]


def tiled_labels(model: nn.Module, images: Tensor, device: torch.device,
                 progress: Callable[[float], None] | None = None) -> np.ndarray:
    """(N, H, W) uint8 class ids (argmax) of uint8 (N, 3, H, W) images, tile by tile if large;
    `progress`: called with the share of the tiles done after each."""
    labels = np.empty((len(images), *images.shape[-2:]), dtype=np.uint8)
    image_tiles = tiles(*images.shape[-2:], 1)
    for number, tile in enumerate(image_tiles, start=1):
        y0, x0, y1, x1 = tile.core
        labels[:, y0:y1, x0:x1] = tile_logits(model, images, tile, device).argmax(1).to(torch.uint8).cpu().numpy()
        if progress is not None:
            progress(number / len(image_tiles))
    return labels


def tiled_logits(model: nn.Module, images: Tensor, device: torch.device) -> Iterator[tuple[Box, Tensor]]:
    """(core box, (N, C, core height, core width) logits) per tile of uint8 (N, 3, H, W) images:
    one, the whole image, unless the images are too large to run whole."""
    for tile in tiles(*images.shape[-2:], 1):
        yield tile.core, tile_logits(model, images, tile, device)
