"""Streaming pool scoring and the choice of regions and images (s4al/acquisition/pool.py)."""

import math
import platform
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Counted, active, tiny_config
from s4al.acquisition import pool as pool_module
from s4al.acquisition.pool import (
    Query,
    choose_images,
    choose_regions,
    images_per_cycle,
    score_cells,
    score_images,
)
from s4al.acquisition.regions import cell_box
from s4al.acquisition.scores import entropy
from s4al.data import build_dataset
from s4al.data.batches import to_model_input
from s4al.errors import S4alError
from s4al.model import build_model

CPU = torch.device("cpu")
S = 16  # cell size: a 48x64 image is a 3x4 grid


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    dataset = build_dataset(cfg.dataset, "train", cfg.seed)
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset.classes.num_classes).eval()
    return cfg, dataset, model


def test_streaming_over_the_pool_equals_scoring_each_image_alone(setup):
    cfg, dataset, model = setup
    pool = [3, 5, 6, 8, 11, 12, 17]  # 7 images: batches of 3, 3 and 1
    bought = {5: [(0, 0, 16, 16)], 11: [(16, 16, 32, 32), (32, 48, 48, 64)]}
    streamed = score_cells(model, dataset, pool, bought, active(cfg, metric="entropy", score_batch_size=3), CPU, 0, fast="auto")
    assert sorted(streamed) == pool
    for i in pool:
        alone = score_cells(model, dataset, [i], bought, active(cfg, metric="entropy", score_batch_size=1), CPU,
                             0, fast="auto")
        assert streamed[i].shape == (3, 4)
        np.testing.assert_allclose(streamed[i], alone[i], rtol=1e-5, atol=1e-6)
    per_image = active(cfg, selection="per_image", regions_per_image=2)
    sizes = {i: (48, 64) for i in pool}
    one_by_one = {i: score_cells(model, dataset, [i], bought, per_image, CPU, 0, fast="auto")[i] for i in pool}
    chosen, reference = choose_regions(streamed, sizes, per_image), choose_regions(one_by_one, sizes, per_image)
    assert [(q.index, q.box) for q in chosen] == [(q.index, q.box) for q in reference]
    assert len(chosen) == 2 * len(pool)
    assert [q.score for q in chosen] == pytest.approx([q.score for q in reference], rel=1e-5)


def test_cell_scores_are_the_mean_pixel_entropy_over_unbought_pixels(setup):
    cfg, dataset, model = setup
    i = 4
    bought = {i: [(0, 0, 16, 16), (16, 16, 32, 24)]}  # a whole cell, and the left half of cell (1, 1)
    cells = score_cells(model, dataset, [i], bought, active(cfg, metric="entropy"), CPU, 0, fast="auto")[i]
    with torch.no_grad():
        image = torch.from_numpy(dataset.load(i).image).permute(2, 0, 1)[None]
        pixels = entropy(model(to_model_input(image, CPU)).softmax(1))[0]
    assert cells[0, 0] == -math.inf  # bought cells can never be chosen again
    assert cells[1, 1] == pytest.approx(pixels[16:32, 24:32].mean().item(), rel=1e-5)
    for row, col in [(0, 1), (2, 3), (1, 2)]:
        y0, x0, y1, x1 = cell_box(row, col, 48, 64, S)
        assert cells[row, col] == pytest.approx(pixels[y0:y1, x0:x1].mean().item(), rel=1e-5)


def test_random_metric_is_reproducible_from_the_seed(setup):
    cfg, dataset, model = setup
    a = active(cfg, metric="random")
    first = score_cells(model, dataset, [1, 2], {}, a, CPU, 7, fast="auto")
    again = score_cells(model, dataset, [1, 2], {}, a, CPU, 7, fast="auto")
    other = score_cells(model, dataset, [1, 2], {}, a, CPU, 8, fast="auto")
    assert all(np.array_equal(first[i], again[i]) for i in (1, 2))
    assert not np.array_equal(first[1], other[1])
    assert all(((0 <= first[i]) & (first[i] < 1)).all() for i in (1, 2))
    # drawn per image: the same whatever else shares the batch (or the rank, under DDP)
    assert np.array_equal(score_cells(model, dataset, [2], {}, a, CPU, 7, fast="auto")[2], first[2])


def test_random_regions_take_an_image_s_smaller_edge_cells_no_more_often_than_the_others():
    """A 48x64 image in 20x20 cells: 6 whole cells, 3 of 8x20, 2 of 20x4 and one of 8x4. A random
    pick of one cell per image takes each alike, so over 240 images about 240 * 6/12 = 120 whole
    cells and 20 corners (binomial sd 7.7 and 4.3); a mean of pixel draws, which varies more in a
    cell of fewer pixels, took 53 and 56."""
    cfg = tiny_config(dataset={"synthetic": {"num_train": 240, "num_val": 4, "height": 48, "width": 64}})
    dataset = build_dataset(cfg.dataset, "train", cfg.seed)
    a = active(cfg, metric="random", region_size=20, regions_per_image=1, score_batch_size=16)
    pool = list(range(240))
    cells = score_cells(nn.Identity(), dataset, pool, {}, a, CPU, 0, fast="off")
    chosen = choose_regions(cells, {i: (48, 64) for i in pool}, a)
    picked = Counter((y1 - y0, x1 - x0) for y0, x0, y1, x1 in (q.box for q in chosen))
    assert sum(picked.values()) == 240
    assert 95 <= picked[(20, 20)] <= 145
    assert picked[(8, 4)] <= 35


class TwoSizes(Counted):
    """Even images cut to 16x16 (256 pixels), odd ones whole (48x64, 3072 pixels)."""

    def image_size(self, index):
        return (16, 16) if index % 2 == 0 else self.base.image_size(index)

    def load_image(self, index):
        image = super().load_image(index)
        return image[:16, :16] if index % 2 == 0 else image


def test_random_images_take_small_and_large_images_alike():
    """20 of 40 small and 40 large images: about 10 small ones (binomial sd 2.2); the mean of
    pixel draws, which varies more in a smaller image, took 18."""
    cfg = tiny_config(dataset={"synthetic": {"num_train": 80, "num_val": 4, "height": 48, "width": 64}})
    dataset = TwoSizes(build_dataset(cfg.dataset, "train", cfg.seed))
    a = active(cfg, level="image", metric="random")
    chosen = choose_images(nn.Identity(), dataset, [], list(range(80)), 20, a, CPU, 0, fast="off")
    assert len({q.index for q in chosen}) == 20
    assert 4 <= sum(q.index % 2 == 0 for q in chosen) <= 16
    assert chosen == choose_images(nn.Identity(), dataset, [], list(range(80)), 20, a, CPU, 0, fast="off")


def test_choose_regions_per_image_and_global():
    cells = {
        2: np.array([[0.1, 0.9, -np.inf, 0.3], [0.2, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]]),
        7: np.full((3, 4), -np.inf),  # everything bought: nothing to choose
        9: np.array([[0.95, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.85]]),
    }
    sizes = {i: (48, 64) for i in cells}
    per_image = choose_regions(cells, sizes, tiny_config().active.model_copy(update={"regions_per_image": 2}))
    assert per_image == [
        Query(2, (0, 16, 16, 32), 0.9), Query(2, (16, 16, 32, 32), 0.8),
        Query(9, (0, 0, 16, 16), 0.95), Query(9, (32, 48, 48, 64), 0.85),
    ]
    glob = tiny_config(active={"selection": "global", "global_budget": 3}).active
    assert choose_regions(cells, sizes, glob) == [
        Query(9, (0, 0, 16, 16), 0.95), Query(2, (0, 16, 16, 32), 0.9), Query(9, (32, 48, 48, 64), 0.85)
    ]
    everything = tiny_config(active={"selection": "global", "global_budget": 100}).active
    assert len(choose_regions(cells, sizes, everything)) == 12 + 12 - 1  # -inf cells are never bought


class Grey(torch.utils.data.Dataset):
    """Flat images, image i all of grey level levels[i] (0..255); 48x64 unless `sizes` says otherwise."""

    def __init__(self, levels, sizes=None):
        self.levels, self.sizes = levels, sizes or {}

    def __len__(self):
        return len(self.levels)

    def image_size(self, index):
        return self.sizes.get(index, (48, 64))

    def image_id(self, index):
        return f"grey{index}"

    def load_image(self, index):
        return np.full((*self.image_size(index), 3), self.levels[index], np.uint8)


class GreyModel(nn.Module):
    """Two classes of probabilities (v, 1 - v) at a pixel of grey level v in (0, 1); its features
    are its input, so an image's pooled feature is its grey level in each of the 3 channels."""

    def forward(self, x):
        v = x[:, :1]
        return torch.cat([v.log(), (1 - v).log()], dim=1)

    def features(self, x):
        return x


def test_choose_images_by_entropy_ranks_known_entropies_and_breaks_ties_by_lower_index():
    """Grey 51, 85 and 102 are v = 0.2, 1/3 and 0.4, entropies -v ln v - (1 - v) ln(1 - v):
    0.500402, ln 3 - 2/3 ln 2 = 0.636514 and 0.673012 (a mean over pixels: the same at any size).
    Images 5 and 7 tie (both grey 102); the pool lists 7 first, the lower index still goes first.
    Each query is its image whole, at its own size."""
    dataset = Grey([0, 0, 51, 0, 85, 102, 0, 102, 0, 51], sizes={4: (32, 40)})
    a = active(tiny_config(), level="image", metric="entropy", score_batch_size=8)
    chosen = choose_images(GreyModel(), dataset, [0], [9, 7, 2, 5, 4], 3, a, CPU, 0, fast="off")
    assert chosen == [Query(5, (0, 0, 48, 64), pytest.approx(0.673012, abs=1e-5)),
                      Query(7, (0, 0, 48, 64), pytest.approx(0.673012, abs=1e-5)),
                      Query(4, (0, 0, 32, 40), pytest.approx(0.636514, abs=1e-5))]


def test_pool_scoring_returns_freed_memory_every_trim_every_batches(setup, monkeypatch):
    cfg, dataset, model = setup
    trims = []
    monkeypatch.setattr(pool_module, "TRIM_EVERY", 2)
    monkeypatch.setattr(pool_module, "_release_freed_memory", lambda: trims.append(True))
    pool = list(range(10))  # 5 batches of 2: trimmed after the 2nd and the 4th
    cells = score_cells(model, dataset, pool, {}, active(cfg, score_batch_size=2), CPU, 0, fast="auto")
    assert len(trims) == 2 and sorted(cells) == pool


def test_coreset_picks_the_image_farthest_from_the_labelled_ones_then_from_those_and_the_first_pick():
    """Features are grey levels: labelled image 0 is black (0); the pool's levels are 51, 204, 255
    and 102. Farthest from {0}: 255 (image 3); then from {0, 255}: 51 and 204 are 51 away, 102 is
    102 away (image 4), though 204 is the second farthest from the labelled image alone."""
    dataset = Grey([0, 51, 204, 255, 102])
    a = active(tiny_config(), level="image", metric="coreset", score_batch_size=8)
    chosen = choose_images(GreyModel(), dataset, [0], [1, 2, 3, 4], 2, a, CPU, 0, fast="off")
    assert chosen == [Query(3, (0, 0, 48, 64), 0.0), Query(4, (0, 0, 48, 64), 0.0)]


def test_an_image_scored_nan_is_refused_by_name_not_ranked():
    """A NaN breaks sorting: the images bought would be neither the best nor the NaN one alone."""
    class NaNOnDarkGrey(GreyModel):
        def forward(self, x):
            return torch.where(x[:, :1] < 0.25, torch.nan, super().forward(x))

    dataset = Grey([0, 204, 51, 153])  # 51: v = 0.2
    a = active(tiny_config(), level="image", metric="entropy", score_batch_size=8)
    with pytest.raises(S4alError, match=r"image scores contain NaN \(grey2\): .* nothing was asked"):
        choose_images(NaNOnDarkGrey(), dataset, [0], [1, 2, 3], 2, a, CPU, 0, fast="off")


def test_core_set_features_go_to_the_other_ranks_as_their_own_rows(monkeypatch):
    """A tensor's row pickles with the whole batch it is a view of: a pool's features, sent row by
    row, would weigh the pool times more."""
    import pickle

    shards = []
    monkeypatch.setattr(pool_module.distributed, "gather_objects", lambda shard: shards.append(shard) or [shard])
    dataset = Grey(list(range(0, 256, 4)))
    features = pool_module.image_features(GreyModel(), dataset, list(range(64)), 64, CPU, fast="off")
    assert features.shape == (64, 3) and torch.allclose(features[:, 0], torch.arange(0, 256, 4) / 255)
    own_rows = {k: np.array(v, copy=True) for k, v in shards[0].items()}
    assert len(pickle.dumps(shards[0])) <= 1.1 * len(pickle.dumps(own_rows))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_s_malloc_trim_is_found_and_releasing_memory_runs():
    assert pool_module._MALLOC_TRIM is not None
    pool_module._release_freed_memory()


def test_scoring_an_image_too_large_to_run_whole_returns_freed_memory_after_each_tile(monkeypatch):
    """1776x2400 (4.26 Mpixels) is over 2048 x 2048: tiles of 1776-px cores, one row of two; the
    48x64 image runs whole, and two batches are under TRIM_EVERY. Both are grey 51: entropy 0.500402."""
    trims = []
    monkeypatch.setattr(pool_module, "_release_freed_memory", lambda: trims.append(True))
    dataset = Grey([51, 51], sizes={0: (1776, 2400)})
    scores = score_images(GreyModel(), dataset, [0, 1], "entropy", 2, CPU, 0, fast="off")
    assert len(trims) == 2
    assert scores == pytest.approx({0: 0.500402, 1: 0.500402}, abs=1e-5)


def test_config_values_too_large_for_the_images_are_said_not_capped_silently():
    sizes = {0: (20, 40), 1: (48, 64)}  # with 16x16 cells: 2x3 and 3x4 grids
    wide_cells = tiny_config(active={"region_size": 32, "regions_per_image": 1}).active
    with pytest.warns(pool_module.CappedConfigWarning) as said:
        pool_module.warn_capped(sizes, wide_cells)
    assert [str(w.message) for w in said] == [
        "active.region_size 32 is larger than a side of 1 pool image(s), e.g. 20x40: their cells are cut to the image"
    ]
    many = tiny_config(active={"region_size": 16, "regions_per_image": 7}).active
    with pytest.warns(pool_module.CappedConfigWarning) as said:
        pool_module.warn_capped(sizes, many)
    assert [str(w.message) for w in said] == [
        "active.regions_per_image 7 is more than the cells of 1 pool image(s), e.g. 20x40 has 2x3 = 6 cells of "
        "16x16: every cell of those is asked for"
    ]
    assert len(choose_regions({0: np.zeros((2, 3)), 1: np.zeros((3, 4))}, sizes, many)) == 6 + 7  # capped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool_module.warn_capped(sizes, tiny_config(active={"region_size": 16, "regions_per_image": 6}).active)


@pytest.mark.parametrize("selection, values, sizes, expected", [
    # 2 cells of 16x16 for each of 3 images of 48x64: 1,536 px of 3,072 a mean image: 0.5 image, at least 1
    ("per_image", {"regions_per_image": 2}, [(48, 64)] * 3, 1),
    # 4 cells x 3 images = 3,072 px over a mean image of (1,024 + 1,024 + 3,072) / 3 = 1,707 px: 1.8 images
    ("per_image", {"regions_per_image": 4}, [(32, 32), (32, 32), (48, 64)], 2),
    # a global budget of 30 cells of 256 px over 3,072 px images: 2.5, rounded to even: 2
    ("global", {"global_budget": 30}, [(48, 64)] * 5, 2),
    ("global", {"global_budget": 5}, [(48, 64)] * 5, 1),  # 0.42 images: at least 1
    ("per_image", {"regions_per_image": 4}, [], 0),  # no pool, nothing to buy
])
def test_whole_images_a_cycle_spend_the_region_protocols_pixel_budget(selection, values, sizes, expected):
    cfg = active(tiny_config(), level="image", region_size=16, selection=selection, **values)
    assert images_per_cycle(sizes, cfg) == expected
