import math

import numpy as np
import pytest
import torch

from s4al.acquisition.regions import (
    box_masks,
    boxes_within,
    cell_box,
    cell_scores,
    grid_shape,
    labelled_fraction,
    labelled_pixel_count,
    select_global,
    select_per_image,
    union_area,
)

INF = math.inf


def test_grid_shapes_of_the_paper_and_edge_cells():
    assert grid_shape(360, 480, 30) == (12, 16)  # CamVid
    assert grid_shape(688, 688, 43) == (16, 16)  # Cityscapes at the 688x688 protocol
    assert grid_shape(70, 100, 30) == (3, 4)  # 10-px edge row and column kept
    assert cell_box(0, 0, 70, 100, 30) == (0, 0, 30, 30)
    assert cell_box(1, 2, 70, 100, 30) == (30, 60, 60, 90)
    assert cell_box(2, 3, 70, 100, 30) == (60, 90, 70, 100)
    with pytest.raises(ValueError, match="outside"):
        cell_box(3, 0, 70, 100, 30)


def known_score_map() -> tuple[torch.Tensor, torch.Tensor]:
    """A 70x100 image (3x4 grid of 30-px cells) with hand-placed scores and labels."""
    scores = torch.zeros(1, 70, 100)
    labelled = torch.zeros(1, 70, 100, dtype=torch.bool)
    scores[0, 60:70, 90:100] = 5.0  # edge corner cell (2, 3): 10x10 pixels
    scores[0, 60:70, 0:30] = 1.5  # edge cell (2, 0): 10x30 pixels, mean must not be diluted by padding
    scores[0, 0:30, 30:60] = 9.0  # cell (0, 1): high but fully labelled
    labelled[0, 0:30, 30:60] = True
    scores[0, 30:60, 60:75] = 100.0  # cell (1, 2): its labelled left half must not count
    labelled[0, 30:60, 60:75] = True
    scores[0, 30:60, 75:90] = 2.0
    scores[0, 30:60, 0:15] = 4.0  # cell (1, 0): mean 2.0 over all 900 pixels, ties with (1, 2)
    return scores, labelled


KNOWN_CELLS = torch.tensor(  # the cells of known_score_map(), by hand
    [
        [0.0, -INF, 0.0, 0.0],
        [2.0, 0.0, 2.0, 0.0],
        [1.5, 0.0, 0.0, 5.0],
    ]
)


def test_cell_scores_average_unlabelled_pixels_only():
    assert torch.equal(cell_scores(*known_score_map(), 30)[0], KNOWN_CELLS)


def test_nan_and_inf_on_labelled_pixels_stay_out_of_their_cells():
    scores, labelled = known_score_map()
    scores[0, 0:30, 30:60] = math.nan  # cell (0, 1), all labelled
    scores[0, 30:45, 60:75] = math.nan  # cell (1, 2): its labelled left half
    scores[0, 45:60, 60:75] = INF
    scores[0, 30:40, 60:70] = -INF
    assert torch.equal(cell_scores(scores, labelled, 30)[0], KNOWN_CELLS)


def test_cell_scores_match_a_per_cell_loop():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 47, 61, generator=generator)
    labelled = torch.rand(2, 47, 61, generator=generator) < 0.5
    labelled[1, :20, :20] = True
    result = cell_scores(scores, labelled, 20)
    assert result.shape == (2, 3, 4)
    for n in range(2):
        for row in range(3):
            for col in range(4):
                y0, x0, y1, x1 = cell_box(row, col, 47, 61, 20)
                free = ~labelled[n, y0:y1, x0:x1]
                want = scores[n, y0:y1, x0:x1][free].mean().item() if free.any() else -INF
                assert result[n, row, col].item() == pytest.approx(want, rel=1e-5)


def test_select_per_image_top_k_skips_labelled_cells_and_breaks_ties_by_index():
    grid = cell_scores(*known_score_map(), 30)[0]
    assert select_per_image(grid, 3) == [(2, 3, 5.0), (1, 0, 2.0), (1, 2, 2.0)]
    assert select_per_image(grid, 6)[3:] == [(2, 0, 1.5), (0, 0, 0.0), (0, 2, 0.0)]
    everything = select_per_image(grid.numpy(), 100)
    assert len(everything) == 11
    assert (0, 1) not in [(row, col) for row, col, _ in everything]


def test_select_global_ranks_the_pool_with_deterministic_ties():
    pool = {
        "b": np.array([[1.0, 7.0], [-INF, 3.0]]),
        "a": np.array([[7.0, 0.5], [3.0, -INF], [0.2, 0.1]]),
        "c": torch.tensor([[-INF]]),
    }
    assert select_global(pool, 4) == [("a", 0, 0, 7.0), ("b", 0, 1, 7.0), ("a", 1, 0, 3.0), ("b", 1, 1, 3.0)]
    assert len(select_global(pool, 100)) == 8  # every finite cell
    assert select_global({}, 3) == []


@pytest.mark.parametrize("select", [
    lambda pool: select_per_image(pool["b"], 1),
    lambda pool: select_global(pool, 1),  # NaN in any image of the pool, not only the first
], ids=["per_image", "global"])
def test_selection_rejects_nan(select):
    pool = {"a": np.array([[0.9, 0.1]]), "b": torch.tensor([[0.5, math.nan]])}
    with pytest.raises(ValueError, match=r"^cell scores contain NaN: the model's probabilities or the acquisition metric "
                                         r"\(active.metric\) gave a pixel NaN; nothing was asked, and a resume scores the pool again$"):
        select(pool)


def test_union_area_counts_overlaps_once():
    assert union_area([]) == 0
    assert union_area([(0, 0, 30, 30), (0, 0, 30, 30)]) == 900
    assert union_area([(0, 0, 30, 30), (15, 15, 45, 45)]) == 900 + 900 - 225
    assert union_area([(0, 0, 30, 30), (0, 30, 30, 60), (60, 90, 70, 100)]) == 1900
    assert union_area([(0, 0, 10, 10), (5, 5, 15, 15), (0, 5, 15, 10)]) == 100 + 100 + 75 - 25 - 50 - 50 + 25


def test_paper_labelled_fraction_arithmetic():
    # CamVid: 4 cells of 30x30 per 360x480 image and cycle: 3600 / 172800 = 0.020833 of it.
    four_cells = [cell_box(row, col, 360, 480, 30) for row, col in [(0, 0), (0, 1), (5, 7), (11, 15)]]
    assert labelled_fraction({"img": (360, 480)}, set(), {"img": four_cells}) == pytest.approx(0.020833, abs=1e-6)
    sizes = {f"img{i}": (360, 480) for i in range(10)}
    initial = {"img0"}  # 10% fully labelled
    boxes = {
        image_id: [cell_box(row, col, 360, 480, 30) for row in range(2) for col in range(4)]  # 2 cycles x 4 cells
        for image_id in sizes
        if image_id not in initial
    }
    assert labelled_fraction(sizes, initial, boxes) == pytest.approx(0.10 + 2 * 0.90 * 3600 / 172800)
    assert labelled_fraction(sizes, initial, boxes) == pytest.approx(0.1375)


def test_boxes_inside_a_fully_labelled_image_add_nothing():
    sizes = {"full": (10, 10), "part": (10, 10)}
    boxes = {"full": [(0, 0, 5, 5)], "part": [(0, 0, 5, 5), (0, 0, 5, 5)]}
    assert labelled_pixel_count(sizes, {"full"}, boxes) == 125
    assert labelled_fraction(sizes, {"full"}, boxes) == pytest.approx(0.625)


def test_box_masks_cover_exactly_each_images_boxes():
    masks = box_masks([[(0, 0, 16, 16), (16, 32, 48, 48)], [], [(40, 60, 48, 64)]], 48, 64)
    first, nothing, corner = masks
    assert masks.shape == (3, 48, 64)
    assert first.sum() == 16 * 16 + 32 * 16
    assert first[:16, :16].all() and first[16:48, 32:48].all() and not first[16:, :32].any()
    assert not nothing.any()
    assert corner.sum() == 8 * 4 and corner[40:, 60:].all()


def test_boxes_within_clips_to_the_area_in_its_own_coordinates():
    boxes = [(20, 20, 40, 70), (0, 0, 10, 10), (32, 64, 48, 96)]
    assert boxes_within(boxes, (32, 32, 64, 64)) == [(0, 0, 8, 32)]  # the second misses, the third only touches
    assert boxes_within(boxes, (0, 0, 48, 128)) == boxes
