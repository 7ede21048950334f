"""The region grid: s x s cells over a full-resolution image, cell scores, selection and pixel accounting.

Cells are laid from the top-left corner; when H or W is not a multiple of s the last row/column
of cells is smaller than s and is kept (it is as buyable as any other cell).
A box is (y0, x0, y1, x1), half-open, in full-resolution pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from s4al.data.base import Box
from s4al.errors import S4alError


def grid_shape(h: int, w: int, s: int) -> tuple[int, int]:
    """(rows, cols) of the cell grid, edge cells included."""
    if h < 1 or w < 1 or s < 1:
        raise ValueError(f"image size and cell size must be positive, got h={h} w={w} s={s}")
    return -(-h // s), -(-w // s)


def cell_box(row: int, col: int, h: int, w: int, s: int) -> Box:
    """The box of cell (row, col), clipped to the image."""
    rows, cols = grid_shape(h, w, s)
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"cell ({row}, {col}) is outside the {rows}x{cols} grid")
    return row * s, col * s, min((row + 1) * s, h), min((col + 1) * s, w)


def _sum_per_cell(x: Tensor, rows: int, cols: int, s: int) -> Tensor:
    n = x.shape[0]
    return x.reshape(n, rows, s, cols, s).sum(dim=(2, 4))


def cell_scores(pixel_scores: Tensor, excluded: Tensor, s: int) -> Tensor:
    """(N, rows, cols) mean pixel score over each cell's pixels not `excluded` (labelled or asked
    already); -inf if it has none."""
    if pixel_scores.dim() != 3 or pixel_scores.shape != excluded.shape:
        raise ValueError(
            f"pixel_scores and excluded must both be (N, H, W), got "
            f"{tuple(pixel_scores.shape)} and {tuple(excluded.shape)}"
        )
    _, h, w = pixel_scores.shape
    rows, cols = grid_shape(h, w, s)
    counted = ~excluded.to(device=pixel_scores.device, dtype=torch.bool)
    # where() rather than multiply, so a NaN/inf score on an excluded pixel cannot leak into its cell.
    masked = torch.where(counted, pixel_scores.float(), 0.0)
    padding = (0, cols * s - w, 0, rows * s - h)
    sums = _sum_per_cell(F.pad(masked, padding), rows, cols, s)
    counts = _sum_per_cell(F.pad(counted.float(), padding), rows, cols, s)
    return torch.where(counts > 0, sums / counts.clamp(min=1), float("-inf"))


def _as_numpy(scores: Tensor | np.ndarray) -> np.ndarray:
    array = scores.detach().cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores)
    if array.ndim != 2:
        raise ValueError(f"cell scores must be (rows, cols), got shape {array.shape}")
    if np.isnan(array).any():
        raise S4alError("cell scores contain NaN: the model's probabilities or the acquisition metric "
                        "(active.metric) gave a pixel NaN; nothing was asked, and a resume scores the pool again")
    return array.astype(np.float64)


def _ranked(flat: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the `limit` best scores above -inf; the stable sort keeps ties in index order."""
    order = np.argsort(-flat, kind="stable")
    return order[flat[order] > -np.inf][: max(limit, 0)]


def select_per_image(cell_scores: Tensor | np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """Top-k cells of one image as (row, col, score); -inf cells are never chosen."""
    scores = _as_numpy(cell_scores)
    cols = scores.shape[1]
    flat = scores.ravel()
    return [(int(i) // cols, int(i) % cols, float(flat[i])) for i in _ranked(flat, k)]


def select_global(
    scores_by_image: Mapping[Hashable, Tensor | np.ndarray], budget: int
) -> list[tuple[Hashable, int, int, float]]:
    """Top-`budget` cells over the pool as (image_id, row, col, score); ties go to the smaller
    image_id, then the lower flat cell index."""
    image_ids = sorted(scores_by_image)
    if not image_ids:
        return []
    grids = [_as_numpy(scores_by_image[image_id]) for image_id in image_ids]
    flat = np.concatenate([grid.ravel() for grid in grids])
    owner = np.repeat(np.arange(len(grids)), [grid.size for grid in grids])
    local = np.concatenate([np.arange(grid.size) for grid in grids])
    chosen = []
    for i in _ranked(flat, budget):
        cols = grids[owner[i]].shape[1]
        chosen.append((image_ids[owner[i]], int(local[i]) // cols, int(local[i]) % cols, float(flat[i])))
    return chosen


def box_masks(
    boxes: Sequence[Sequence[Box]], height: int, width: int, device: torch.device | None = None
) -> Tensor:
    """(N, height, width) bool, True inside image n's boxes[n]. Made on the device that uses it: a
    GPU waits for its queued work before a copy from pageable host memory."""
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool, device=device)
    for mask, image_boxes in zip(masks, boxes):
        for y0, x0, y1, x1 in image_boxes:
            mask[y0:y1, x0:x1] = True
    return masks


def boxes_within(boxes: Sequence[Box], area: Box) -> list[Box]:
    """The parts of `boxes` inside `area`, in coordinates relative to its corner; empty parts dropped."""
    ay0, ax0, ay1, ax1 = area
    inside = [(max(y0, ay0), max(x0, ax0), min(y1, ay1), min(x1, ax1)) for y0, x0, y1, x1 in boxes]
    return [(y0 - ay0, x0 - ax0, y1 - ay0, x1 - ax0) for y0, x0, y1, x1 in inside if y0 < y1 and x0 < x1]


def union_area(boxes: Sequence[Box]) -> int:
    """Pixels covered by at least one box (overlaps counted once), by coordinate compression."""
    if not boxes:
        return 0
    corners = np.asarray(boxes, dtype=np.int64)
    ys = np.unique(corners[:, [0, 2]])
    xs = np.unique(corners[:, [1, 3]])
    covered = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)
    row_spans = np.searchsorted(ys, corners[:, [0, 2]])
    col_spans = np.searchsorted(xs, corners[:, [1, 3]])
    for (r0, r1), (c0, c1) in zip(row_spans, col_spans):
        covered[r0:r1, c0:c1] = True
    cell_areas = np.outer(np.diff(ys), np.diff(xs))
    return int(cell_areas[covered].sum())


def labelled_pixel_count(
    image_sizes: Mapping[int, tuple[int, int]],
    fully_labelled: Collection[int],
    boxes_by_image: Mapping[int, Sequence[Box]],
) -> int:
    """Pixels of fully labelled images plus the union area of the boxes bought in the others."""
    count = 0
    for image, (h, w) in image_sizes.items():
        count += h * w if image in fully_labelled else union_area(boxes_by_image.get(image, ()))
    return count


def labelled_fraction(
    image_sizes: Mapping[int, tuple[int, int]],
    fully_labelled: Collection[int],
    boxes_by_image: Mapping[int, Sequence[Box]],
) -> float:
    """Fraction of all pixels of `image_sizes` that are labelled (the paper's "% of data")."""
    total = sum(h * w for h, w in image_sizes.values())
    if total == 0:
        return 0.0
    return labelled_pixel_count(image_sizes, fully_labelled, boxes_by_image) / total
